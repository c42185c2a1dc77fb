//! `BPF_PROG_TEST_RUN` for per-packet cost measurements (aya 0.14 has no
//! wrapper, so this calls the `bpf` syscall directly).

use crate::error::{DatapathError, Result};
use crate::loader::{Datapath, Program};

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr`'s `test` member.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Offset of `ifindex` in `struct __sk_buff`.
const SKB_IFINDEX_OFFSET: usize = 40;
/// Bytes of `struct __sk_buff` passed as context (up to `ifindex`, rest zero).
const SKB_CTX_SIZE: usize = 44;

/// Result of a test run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestRunResult {
    /// Program return code of the last run (0 = TC_ACT_OK, 2 = TC_ACT_SHOT).
    pub retval: u32,
    /// Average ns per run, as measured by the kernel.
    pub duration_ns: u32,
}

/// Runs a program fd on `packet` `repeat` times with `skb->ifindex = ifindex`
/// (must exist in the caller's namespace, e.g. 1 = lo).
pub fn test_run_fd(
    prog_fd: i32,
    packet: &[u8],
    ifindex: u32,
    repeat: u32,
) -> Result<TestRunResult> {
    let mut ctx = [0u8; SKB_CTX_SIZE];
    ctx[SKB_IFINDEX_OFFSET..SKB_IFINDEX_OFFSET + 4].copy_from_slice(&ifindex.to_ne_bytes());
    let mut attr = TestRunAttr {
        prog_fd: prog_fd as u32,
        data_size_in: packet.len() as u32,
        data_in: packet.as_ptr() as u64,
        repeat,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix; the buffers outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if rc < 0 {
        return Err(DatapathError::io(
            "BPF_PROG_TEST_RUN",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(TestRunResult {
        retval: attr.retval,
        duration_ns: attr.duration,
    })
}

impl Datapath {
    /// Runs `program` on `packet` `repeat` times (see [`test_run_fd`]).
    pub fn test_run(
        &self,
        program: Program,
        packet: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<TestRunResult> {
        test_run_fd(self.program_raw_fd(program)?, packet, ifindex, repeat)
    }
}

/// Builds an Ethernet+IPv4+TCP packet (no checksums: the datapath ignores them).
pub fn tcp_packet(saddr: [u8; 4], daddr: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 14 + 20 + 20];
    p[12] = 0x08; // ETH_P_IP
    p[13] = 0x00;
    let ip = &mut p[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&saddr);
    ip[16..20].copy_from_slice(&daddr);
    let tcp = &mut p[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = flags;
    p
}
