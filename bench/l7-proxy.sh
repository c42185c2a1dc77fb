#!/usr/bin/env bash
# L7 proxy benchmark, everything side by side in one run, one table:
#   direct | Palisade allow-all | Palisade 10/100/1,000 HTTP rules | HAProxy (100 equivalent ACLs)
# Topology: namespaces created here only (node + client pod + server pod,
# 198.18.0.0/15 addresses); Palisade and HAProxy sit in the node namespace
# behind the same nftables TPROXY redirection, transparent to the client.
# Proxy pinned to CPU1 (one worker), load generator and backend on CPU0.
# Metrics: max req/s (wrk, keep-alive, 50 connections), proxy CPU per
# request -> req/s per proxy core, added latency p50/p99 at 50% of
# Palisade-100's max (open-loop loadgen), proxy peak RSS with 1,000
# concurrent connections.
# Needs root and the Debian packages wrk nghttp2-client haproxy nftables.
# Not run in CI.  Usage: bench/l7-proxy.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-8}
TAG=$$
NODE=plb-node-$TAG; CLI=plb-cli-$TAG; SRV=plb-srv-$TAG
CLI_IP=198.18.0.2; SRV_IP=198.18.0.3
WORK=$(mktemp -d /tmp/palisade-l7bench.XXXXXX)
PIDS=()

for p in wrk h2load haproxy nft taskset; do
  command -v $p >/dev/null || { echo "missing $p: apt-get install wrk nghttp2-client haproxy nftables util-linux" >&2; exit 2; }
done

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for n in $CLI $SRV $NODE; do ip netns del $n 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "building (release)..." >&2
cargo build --release -q -p palisade
cargo build --release -q -p palisade-proxy --example bench_backend --example loadgen
BIN=${CARGO_TARGET_DIR:-target}/release
PAL=$BIN/palisade

# --- topology -------------------------------------------------------------
ip netns add $NODE; ip -n $NODE link set lo up
ip netns exec $NODE sysctl -qw net.ipv4.ip_forward=1
mkpod() { # name ip host-if
  ip netns add $1; ip -n $1 link set lo up
  ip -n $NODE link add $3 type veth peer name eth0 netns $1
  ip -n $1 addr add $2/32 dev eth0; ip -n $1 link set eth0 up
  ip -n $1 route add 169.254.1.1 dev eth0 scope link
  ip -n $1 route add default via 169.254.1.1 dev eth0
  local hmac pmac
  hmac=$(ip netns exec $NODE cat /sys/class/net/$3/address)
  pmac=$(ip netns exec $1 cat /sys/class/net/eth0/address)
  ip -n $1 neigh replace 169.254.1.1 lladdr $hmac dev eth0 nud permanent
  ip -n $NODE link set $3 up
  ip -n $NODE route replace $2/32 dev $3 scope link
  ip -n $NODE neigh replace $2 lladdr $pmac dev $3 nud permanent
}
mkpod $CLI $CLI_IP hcli$TAG
mkpod $SRV $SRV_IP hsrv$TAG

taskset -c 0 ip netns exec $SRV $BIN/examples/bench_backend 80 & PIDS+=($!)

# --- policies -------------------------------------------------------------
cluster() {
cat <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {kubernetes.io/metadata.name: default}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: $CLI_IP}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: default, labels: {app: server}}
spec: {containers: [{name: c, image: x}]}
status: {podIP: $SRV_IP}
YAML
}
policy() { # n-rules (0 = allow-all)
  cat <<YAML
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: client}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http:
YAML
  if [ "$1" = 0 ]; then
    echo '              - path: "/.*"'
  else
    for i in $(seq 1 $(( $1 - 1 ))); do
      echo "              - {method: GET, path: \"/api/v1/resource-$i/[0-9]+\", headers: [\"X-Tenant: t$i\"]}"
    done
    echo '              - {method: GET, path: "/bench"}'
  fi
}
haproxy_cfg() { # n-rules
  cat <<CFG
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend fe
  bind 0.0.0.0:15002 transparent
CFG
  for i in $(seq 1 $(( $1 - 1 ))); do
    echo "  http-request allow if METH_GET { path_reg ^/api/v1/resource-$i/[0-9]+\$ } { req.hdr(x-tenant) -m str t$i }"
  done
  cat <<CFG
  http-request allow if METH_GET { path_reg ^/bench\$ }
  http-request deny deny_status 403
  default_backend be
backend be
  source 0.0.0.0 usesrc clientip
  server s1 $SRV_IP:80
CFG
}
tproxy_table() { # port
  ip netns exec $NODE nft -f - <<NFT
table ip plb_bench
delete table ip plb_bench
table ip plb_bench {
  chain prerouting {
    type filter hook prerouting priority mangle; policy accept;
    meta l4proto tcp socket transparent 1 meta mark set 0x200 accept
    ip daddr $SRV_IP tcp dport 80 tproxy to :$1 meta mark set 0x200 accept
  }
}
NFT
  ip -n $NODE rule add fwmark 0x200/0xf00 lookup 2004 2>/dev/null || true
  ip -n $NODE route replace local 0.0.0.0/0 dev lo table 2004
}

cpu_ticks() { awk '{print $14+$15}' /proc/$1/stat; }
rss_peak_kb() { awk '/VmHWM/{print $2}' /proc/$1/status; }
wait_port_ok() { # wait until a request through the path answers 200
  for _ in $(seq 1 200); do
    code=$(ip netns exec $CLI curl -s -o /dev/null -w '%{http_code}' --max-time 1 http://$SRV_IP/bench || true)
    [ "$code" = 200 ] && return 0
    sleep 0.05
  done
  echo "path not ready (last code $code)" >&2; return 1
}
check_denied() { # the proxy is in the path: a path no rule allows gets 403
  local code
  code=$(ip netns exec $CLI curl -s -o /dev/null -w '%{http_code}' --max-time 2 http://$SRV_IP/not-allowed || true)
  [ "$code" = 403 ] || { echo "$1 is not in the path (GET /not-allowed -> $code)" >&2; exit 1; }
}
wrk_rps() { # -> rps
  taskset -c 0 ip netns exec $CLI wrk -t1 -c50 -d${DUR}s --latency http://$SRV_IP/bench 2>/dev/null \
    | awk '/Requests\/sec/{print $2}'
}
HZ=$(getconf CLK_TCK)
declare -A RPS CORE P50 P99 RSS
measure() { # name pid
  local name=$1 pid=$2
  local t0 t1 rps
  t0=$(cpu_ticks $pid 2>/dev/null || echo 0)
  rps=$(wrk_rps)
  t1=$(cpu_ticks $pid 2>/dev/null || echo 0)
  RPS[$name]=$rps
  if [ "$pid" != 0 ]; then
    CORE[$name]=$(awk -v r=$rps -v d=$((t1-t0)) -v hz=$HZ -v s=$DUR 'BEGIN{u=d/hz/s; if(u>0) printf "%.0f (%.0f%% CPU)", r/u, u*100; else print "-"}')
  else CORE[$name]="-"; fi
}
latency() { # name rate -> p50 p99 (us)
  read -r _ _ p50 p99 < <(taskset -c 0 ip netns exec $CLI $BIN/examples/loadgen $SRV_IP:80 /bench $2 20 $DUR)
  P50[$1]=$p50; P99[$1]=$p99
}
rss_1000() { # name pid
  taskset -c 0 ip netns exec $CLI wrk -t1 -c1000 -d4s http://$SRV_IP/bench >/dev/null 2>&1 || true
  RSS[$1]="$(( $(rss_peak_kb $2) / 1024 )) MB"
}

ORDER=(direct palisade-allow-all palisade-10 palisade-100 palisade-1000 haproxy-100)

# --- direct ---------------------------------------------------------------
wait_port_ok
measure direct 0
RSS[direct]="-"

# --- Palisade -------------------------------------------------------------
run_palisade() { # name rules
  mkdir -p $WORK/m-$2; { cluster; policy $2; } > $WORK/m-$2/all.yaml
  taskset -c 1 $PAL proxy --manifests $WORK/m-$2 --node-netns $NODE --workers 1 --quiet --log warn &
  local pid=$!; PIDS+=($pid)
  for _ in $(seq 1 600); do # the proxy installs its table once its policy is built
    ip netns exec $NODE nft list table ip palisade_proxy >/dev/null 2>&1 && break
    kill -0 $pid 2>/dev/null || { echo "palisade proxy exited" >&2; exit 1; }
    sleep 0.1
  done
  wait_port_ok
  [ "$2" = 0 ] || check_denied $1
  measure $1 $pid
  eval "PID_$2=$pid"
}
stop() { kill $1 2>/dev/null || true; wait $1 2>/dev/null || true; }
run_palisade palisade-allow-all 0; stop $PID_0
run_palisade palisade-10 10; stop $PID_10
run_palisade palisade-1000 1000; stop $PID_1000
run_palisade palisade-100 100
RATE=$(awk -v r=${RPS[palisade-100]} 'BEGIN{printf "%d", r/2}')
latency palisade-100 $RATE
rss_1000 palisade-100 $PID_100
stop $PID_100

# --- HAProxy --------------------------------------------------------------
haproxy_cfg 100 > $WORK/haproxy.cfg
haproxy -c -q -f $WORK/haproxy.cfg
tproxy_table 15002
taskset -c 1 ip netns exec $NODE haproxy -db -f $WORK/haproxy.cfg >$WORK/haproxy.log 2>&1 & HPID=$!; PIDS+=($HPID)
wait_port_ok
check_denied haproxy-100
measure haproxy-100 $HPID
latency haproxy-100 $RATE
rss_1000 haproxy-100 $HPID
stop $HPID
ip netns exec $NODE nft delete table ip plb_bench

latency direct $RATE

# --- table ----------------------------------------------------------------
echo
echo "L7 proxy benchmark ($(nproc) vCPU, ${DUR}s runs; wrk -c50 keep-alive; latency at $RATE req/s = 50% of Palisade-100 max)"
printf "| %-20s | %10s | %-26s | %9s | %9s | %9s | %9s | %-10s |\n" setup "req/s" "req/s per proxy core" "p50 us" "p99 us" "+p50 us" "+p99 us" "RSS@1000c"
printf "|%s|\n" "----------------------|------------|----------------------------|-----------|-----------|-----------|-----------|------------"
for n in "${ORDER[@]}"; do
  p50=${P50[$n]:-}; p99=${P99[$n]:-}
  a50=-; a99=-
  if [ -n "$p50" ] && [ "$n" != direct ]; then a50=$(( p50 - ${P50[direct]} )); a99=$(( p99 - ${P99[direct]} )); fi
  printf "| %-20s | %10s | %-26s | %9s | %9s | %9s | %9s | %-10s |\n" $n "${RPS[$n]:-}" "${CORE[$n]:-}" "${p50:--}" "${p99:--}" $a50 $a99 "${RSS[$n]:--}"
done
