#!/usr/bin/env bash
# Per-packet cost of the datapath's from_container program measured with
# BPF_PROG_TEST_RUN (kernel-timed, 1M repeats, median of 5) at 10, 1,000 and
# 10,000 policy entries, with conntrack, next to a baseline row. Needs root.
# Target: <= 150 ns per packet, flat as entries grow.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench -p palisade-datapath --bench pkt_cost "$@"
