//! Compiles the kernel programs in `bpf/` with clang into OUT_DIR.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf");
    let entries = match std::fs::read_dir("bpf") {
        Ok(entries) => entries,
        Err(e) => panic!("palisade-datapath: cannot read the bpf/ folder: {e}"),
    };
    for entry in entries.flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }
    println!("cargo:rerun-if-env-changed=CLANG");

    let out_dir = match env::var_os("OUT_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => panic!("palisade-datapath: OUT_DIR is not set (build.rs must run under cargo)"),
    };
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    let output = out_dir.join("lxc.bpf.o");
    let result = Command::new(&clang)
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-I/usr/include/x86_64-linux-gnu",
            "-Wall",
            "-Werror",
            "-c",
            "bpf/lxc.bpf.c",
            "-o",
        ])
        .arg(&output)
        .output();
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "palisade-datapath: `{clang}` not found. The eBPF programs are C compiled by clang: \
             install the Debian packages with `apt-get install clang llvm libbpf-dev` \
             (or run `make deps`)."
        ),
        Err(e) => panic!("palisade-datapath: failed to run `{clang}`: {e}"),
        Ok(out) if !out.status.success() => panic!(
            "palisade-datapath: clang failed to compile bpf/lxc.bpf.c ({}).\n{}\n\
             If headers such as <bpf/bpf_helpers.h> are missing, install the Debian package \
             `libbpf-dev`.",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(_) => {}
    }
}
