#!/usr/bin/env bash
# Apply-to-enforced latency of a policy change (p50/p99), API path and
# manifests-directory path, with an in-process agent and two real pods.
# Needs root. Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release -q -p palisade-agent --test bench_apply -- --ignored --nocapture 2>&1 | grep '^|'
