//! Manifests validated per second: every manifest of `shared/corpus/` (read
//! once), parsed and validated with `parse_file`, per file and per byte.
//!
//! `cargo bench -p palisade-policy --bench validate` (set `PALISADE_SHARED`
//! when `shared/` is not beside the checkout).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade_policy::manifest::{Options, parse_file};
use std::hint::black_box;

#[path = "../tests/common/mod.rs"]
mod common;

fn validate_corpus(c: &mut Criterion) {
    let corpus = common::shared_dir().join("corpus");
    let files: Vec<(String, String)> = common::files_under(&corpus, &["yaml", "yml", "json"])
        .into_iter()
        .map(|p| (p.display().to_string(), common::read(&p)))
        .collect();
    let bytes: usize = files.iter().map(|(_, t)| t.len()).sum();
    let docs: usize = files
        .iter()
        .map(|(n, t)| parse_file(n, t, &Options::default()).len())
        .sum();
    eprintln!(
        "validate: {} manifests, {docs} documents, {bytes} bytes",
        files.len()
    );
    let opts = Options::default();
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(files.len() as u64));
    group.bench_function("corpus_manifests", |b| {
        b.iter(|| {
            let mut n = 0;
            for (name, text) in &files {
                n += parse_file(name, black_box(text), &opts).len();
            }
            black_box(n)
        })
    });
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("corpus_bytes", |b| {
        b.iter(|| {
            let mut n = 0;
            for (name, text) in &files {
                n += parse_file(name, black_box(text), &opts).len();
            }
            black_box(n)
        })
    });
    group.finish();
}

criterion_group!(benches, validate_corpus);
criterion_main!(benches);
