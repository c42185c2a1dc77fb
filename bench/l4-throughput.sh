#!/usr/bin/env bash
# TCP throughput (iperf3) and request/response latency between two pods, in
# one run, side by side: no program, Palisade with 10 / 1,000 / 10,000 policy
# entries, an nftables set-based ruleset and a linear iptables ruleset of the
# same sizes. Everything lives in private namespaces (a private agent, node
# namespace and pin root); nothing touches the root namespace. Needs root and
# iperf3 (Debian package iperf3). Not run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-./target/release/palisade}
SECS=${SECS:-3}
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
command -v iperf3 >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iperf3 >/dev/null
[ -x "$BIN" ] || cargo build --release -q -p palisade
T=/tmp/palisade-l4bench-$$; NODE=pal-l4b-$$; PIN=/sys/fs/bpf/palisade-l4bench-$$
mkdir -p $T/m
AGENT_PID=
cleanup() {
  [ -n "$AGENT_PID" ] && kill -9 $AGENT_PID 2>/dev/null || true
  for n in $(ls /var/run/netns 2>/dev/null | grep "^$NODE" || true); do ip netns del $n 2>/dev/null || true; done
  rm -rf $PIN $T
}
trap cleanup EXIT
$BIN agent --node-netns $NODE --pin-root $PIN --state-dir $T/state --manifests $T/m --socket $T/sock \
  --pod-cidr 10.244.0.0/24 --node-name bench --no-l7-proxy >$T/agent.log 2>&1 &
AGENT_PID=$!
for i in $(seq 100); do $BIN status --socket $T/sock >/dev/null 2>&1 && break; sleep 0.1; done
$BIN pod run default/client --labels app=client --socket $T/sock >/dev/null
$BIN pod run default/server --labels app=server --socket $T/sock >/dev/null
CNS=$NODE-default-client; SNS=$NODE-default-server
SIP=$(ip -n $SNS -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)
# a raw pair without any program, attached to the same node namespace
mkraw() { # name ip idx
  ip netns add $NODE-raw-$1
  ip -n $NODE link add raw$3 address 02:aa:00:00:01:0$3 type veth peer name eth0 address 02:bb:00:00:01:0$3 netns $NODE-raw-$1
  ip -n $NODE-raw-$1 link set lo up; ip -n $NODE-raw-$1 addr add $2/32 dev eth0; ip -n $NODE-raw-$1 link set eth0 up
  ip -n $NODE-raw-$1 route add 169.254.1.1 dev eth0 scope link
  ip -n $NODE-raw-$1 route add default via 169.254.1.1 dev eth0
  ip -n $NODE-raw-$1 neigh replace 169.254.1.1 lladdr 02:aa:00:00:01:0$3 dev eth0 nud permanent
  ip -n $NODE link set raw$3 up
  ip -n $NODE route replace $2/32 dev raw$3 scope link
  ip -n $NODE neigh replace $2 lladdr 02:bb:00:00:01:0$3 dev raw$3 nud permanent
}
mkraw client 10.245.0.2 1; mkraw server 10.245.0.3 2
RCNS=$NODE-raw-client; RSNS=$NODE-raw-server; RSIP=10.245.0.3
cat > $T/rr.py <<'PY'
import socket, sys, time
mode = sys.argv[1]
if mode == "server":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 7777)); s.listen(8)
    while True:
        c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            d = c.recv(64)
            if not d: break
            c.sendall(d)
else:
    ip, n = sys.argv[2], int(sys.argv[3])
    c = socket.create_connection((ip, 7777)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat = []
    for _ in range(n):
        t = time.perf_counter(); c.sendall(b"x"); c.recv(64); lat.append(time.perf_counter() - t)
    lat.sort(); print("%.1f %.1f" % (lat[len(lat)//2]*1e6, lat[int(len(lat)*0.99)]*1e6))
PY
for ns in $SNS $RSNS; do
  ip netns exec $ns iperf3 -s -D -p 5201 >/dev/null 2>&1
  ip netns exec $ns python3 $T/rr.py server >/dev/null 2>&1 &
done
sleep 0.5
measure() { # label client-ns server-ip
  local gbps rr
  gbps=$(ip netns exec $2 iperf3 -c $3 -p 5201 -t $SECS -J 2>/dev/null | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))' || echo "fail")
  rr=$(ip netns exec $2 python3 $T/rr.py client $3 20000 2>/dev/null || echo "fail fail")
  printf "| %-34s | %8s | %10s | %10s |\n" "$1" "$gbps" ${rr% *} ${rr#* }
}
policy() { # N entries for the server endpoint: allow client on 5201 and 7777, plus filler ports
  local n=$1 rules=$(( ($1 + 39) / 40 ))
  python3 - "$n" > $T/m/bench.yaml <<'PY'
import sys
n = int(sys.argv[1]); fill = max(n - 3, 0)
print("""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts: [{ports: [{port: "5201", protocol: TCP}, {port: "7777", protocol: TCP}]}]""")
ports = list(range(20000, 20000 + fill))
for i in range(0, len(ports), 40):
    chunk = ports[i:i+40]
    print("    - toPorts: [{ports: [%s]}]" % ", ".join('{port: "%d", protocol: TCP}' % p for p in chunk))
PY
  for i in $(seq 100); do
    got=$($BIN bpf policy get default/server --socket $T/sock -o json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["entries"]))' 2>/dev/null || echo 0)
    [ "$got" -ge "$n" ] && break; sleep 0.2
  done
  echo $got
}
echo "| setup                              | Gbit/s   | RR p50 us  | RR p99 us  |"
echo "|------------------------------------|----------|------------|------------|"
measure "no program" $RCNS $RSIP
for n in 10 1000 10000; do
  got=$(policy $n)
  measure "Palisade, $got entries" $CNS $SIP
done
for n in 10 1000 10000; do
  {
    echo "flush ruleset"
    echo "table inet bench {"
    echo "  set allowed {"
    echo "    type ipv4_addr . inet_service"
    echo "    size 65536"
    echo "    elements = { 10.245.0.2 . 5201, 10.245.0.2 . 7777"
    for p in $(seq 20000 $((20000 + n - 3))); do echo "      , 10.245.0.9 . $p"; done
    echo "    }"
    echo "  }"
    echo "  chain bench_forward {"
    echo "    type filter hook forward priority 0; policy drop;"
    echo "    ct state established,related accept"
    echo "    ip saddr . tcp dport @allowed accept"
    echo "  }"
    echo "}"
  } > $T/nft.conf
  ip netns exec $NODE nft -f $T/nft.conf
  measure "nftables set, $n elements" $RCNS $RSIP
done
ip netns exec $NODE nft flush ruleset
for n in 10 1000 10000; do
  {
    echo "*filter"; echo ":FORWARD DROP [0:0]"
    for p in $(seq 20000 $((20000 + n - 3))); do echo "-A FORWARD -p tcp --dport $p -j ACCEPT"; done
    echo "-A FORWARD -p tcp -d $RSIP --dport 5201 -j ACCEPT"; echo "-A FORWARD -p tcp -d $RSIP --dport 7777 -j ACCEPT"
    echo "-A FORWARD -p tcp -s $RSIP -j ACCEPT"; echo "COMMIT"
  } > $T/ipt.rules
  ip netns exec $NODE iptables-restore < $T/ipt.rules
  measure "iptables linear (stateless), $n rules" $RCNS $RSIP
done
