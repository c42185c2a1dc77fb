#!/usr/bin/env bash
# DNS benchmark (not run in CI): direct dnsmasq vs dnsdist vs Palisade's DNS
# proxy (TPROXY redirect, 100 matchPattern rules, learning into an Engine),
# side by side in one run, in namespaces the run creates and removes.
#
#   sudo bench/dns-bench.sh            # 10 s dnsperf runs
#   DNS_BENCH_SECONDS=20 sudo bench/dns-bench.sh
#
# Needs root and the Debian packages dnsmasq-base dnsdist dnsperf nftables iproute2.
set -euo pipefail
cd "$(dirname "$0")/.."
for bin in dnsmasq dnsdist dnsperf nft ip; do
  command -v "$bin" >/dev/null || { echo "missing $bin (apt-get install -y dnsmasq-base dnsdist dnsperf nftables iproute2)" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces, TPROXY)" >&2; exit 2; }
exec cargo test --release -p palisade-proxy --test dns_bench -- --ignored --nocapture --test-threads=1
