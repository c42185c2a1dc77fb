#!/usr/bin/env bash
# L7 proxy benchmark, everything side by side in one run, three tables:
#   direct | Palisade allow-all | Palisade 10/100/1,000 HTTP rules | HAProxy (100 equivalent ACLs)
# Topology: namespaces created here only (node + client pod + server pod,
# 198.18.0.0/15 addresses); Palisade and HAProxy sit in the node namespace
# behind the same nftables TPROXY redirection, transparent to the client.
# Proxy pinned to CPU1 (one worker), load generator and backend on CPU0.
# Metrics:
# - wrk (HTTP/1.1 keep-alive, 50 connections): max req/s, proxy CPU per
#   request -> req/s per proxy core; proxy peak RSS with 1,000 concurrent
#   connections;
# - latency added at 50% load (Palisade-100, Palisade-1000, HAProxy-100):
#   the loadgen's 20 connections, one request at a time each, first closed
#   loop (the most this pattern gets through the setup), then open loop at
#   half that rate; p50/p99 minus direct's at the same rate; then every
#   setup at one fixed rate (FIXED_RATE, default 5,000 req/s), with the
#   proxy on its own CPU and then moved onto the client's and server's CPU;
# - h2load (h2c prior knowledge, 10 connections x 10 streams): max req/s
#   and req/s per proxy core, HTTP/2 end to end (Palisade forwards h2 as h2;
#   HAProxy detects the h2 preface on the same bind line and uses an h2
#   server line for it).
# Needs root and the Debian packages wrk nghttp2-client haproxy nftables.
# Not run in CI.  Usage: bench/l7-proxy.sh [seconds-per-run]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-8}
FIXED=${FIXED_RATE:-5000} # req/s of the fixed-rate latency table
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
  use_backend be_h2 if { req.ver 2.0 }
  default_backend be
backend be
  source 0.0.0.0 usesrc clientip
  server s1 $SRV_IP:80
backend be_h2
  source 0.0.0.0 usesrc clientip
  server s1 $SRV_IP:80 proto h2
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
  [ "$code" = 403 ] || { echo "$1 is not in the path (GET /not-allowed -> $code)" >&2; redirect_state >&2; exit 1; }
}
redirect_state() { # what the node namespace redirects with (on failure)
  ip -n $NODE rule; ip -n $NODE route show table 2004; ip netns exec $NODE nft list ruleset
}
check_denied_h2() { # the same over h2c prior knowledge
  local codes
  codes=$(taskset -c 0 ip netns exec $CLI h2load -n1 -c1 http://$SRV_IP/not-allowed 2>/dev/null | awk '/^status codes:/{print $7}')
  [ "$codes" = 1 ] || { echo "$1 does not deny over h2c (4xx count: ${codes:-none})" >&2; redirect_state >&2; exit 1; }
}
wrk_rps() { # -> rps
  taskset -c 0 ip netns exec $CLI wrk -t1 -c50 -d${DUR}s --latency http://$SRV_IP/bench 2>/dev/null \
    | awk '/Requests\/sec/{print $2}'
}
h2_rps() { # -> "rps failed-or-non-2xx" (h2c prior knowledge, 10 connections x 10 streams)
  taskset -c 0 ip netns exec $CLI h2load -t1 -c10 -m10 -D $DUR --warm-up-time=1s http://$SRV_IP/bench 2>/dev/null \
    | awk '/^finished in/{r=$4} /^requests:/{bad+=$10} /^status codes:/{bad+=$5+$7+$9} END{printf "%.2f %d\n", r, bad}'
}
HZ=$(getconf CLK_TCK)
declare -A RPS CORE CORE_N P50 P99 RSS H2RPS H2CORE H2CORE_N H2BAD LMAX LRATE DP50 DP99 F50 F99 S50 S99
per_core() { # rps ticks seconds -> "req/s-per-core cpu%" (or "- -")
  awk -v r=$1 -v d=$2 -v hz=$HZ -v s=$3 'BEGIN{u=d/hz/s; if(u>0) printf "%.0f %.0f\n", r/u, u*100; else print "- -"}'
}
measure() { # name pid: wrk (HTTP/1.1) then h2load (h2c)
  local name=$1 pid=$2
  local t0 t1 rps bad pc cpu
  t0=$(cpu_ticks $pid 2>/dev/null || echo 0)
  rps=$(wrk_rps)
  t1=$(cpu_ticks $pid 2>/dev/null || echo 0)
  RPS[$name]=$rps
  CORE[$name]="-"; CORE_N[$name]=""
  if [ "$pid" != 0 ]; then
    read -r pc cpu < <(per_core $rps $((t1-t0)) $DUR)
    [ "$pc" = - ] || { CORE[$name]="$pc ($cpu% CPU)"; CORE_N[$name]=$pc; }
  fi
  t0=$(cpu_ticks $pid 2>/dev/null || echo 0)
  read -r rps bad < <(h2_rps)
  t1=$(cpu_ticks $pid 2>/dev/null || echo 0)
  H2RPS[$name]=$rps; H2BAD[$name]=$bad
  H2CORE[$name]="-"; H2CORE_N[$name]=""
  if [ "$pid" != 0 ]; then
    # the CPU window includes h2load's 1 s warm-up at the same load
    read -r pc cpu < <(per_core $rps $((t1-t0)) $((DUR+1)))
    [ "$pc" = - ] || { H2CORE[$name]="$pc ($cpu% CPU)"; H2CORE_N[$name]=$pc; }
  fi
}
loadgen() { # rate -> "p50 p99" (us; open loop, 20 connections)
  local p50 p99
  read -r _ _ p50 p99 < <(taskset -c 0 ip netns exec $CLI $BIN/examples/loadgen $SRV_IP:80 /bench $1 20 $DUR)
  echo "$p50 $p99"
}
latency() { # name pid: at 50% load = half the most the loadgen's own pattern gets through
  local ok
  read -r _ ok _ _ < <(taskset -c 0 ip netns exec $CLI $BIN/examples/loadgen $SRV_IP:80 /bench max 20 $DUR)
  LMAX[$1]=$(awk -v n=$ok -v s=$DUR 'BEGIN{printf "%d", n/s}')
  LRATE[$1]=$(( LMAX[$1] / 2 ))
  read -r P50[$1] P99[$1] < <(loadgen ${LRATE[$1]})
  # Every setup at one fixed rate, with the proxy on its own CPU, then
  # moved onto CPU0 beside client and server (as a node proxy shares cores
  # with its pods): no cross-CPU wakeup per hop, which on this VM costs more
  # than the proxy's own work.
  read -r F50[$1] F99[$1] < <(loadgen $FIXED)
  taskset -a -p -c 0 $2 >/dev/null
  read -r S50[$1] S99[$1] < <(loadgen $FIXED)
  taskset -a -p -c 1 $2 >/dev/null
}
alive() { # name pid: stop the run if the proxy under test died
  kill -0 $2 2>/dev/null && return 0
  local rc=0; wait $2 || rc=$?
  echo "$1: the proxy (pid $2) died, exit status $rc" >&2; exit 1
}
rss_1000() { # name pid
  taskset -c 0 ip netns exec $CLI wrk -t1 -c1000 -d4s http://$SRV_IP/bench >/dev/null 2>&1 || true
  alive $1 $2
  RSS[$1]="$(( $(rss_peak_kb $2) / 1024 )) MB"
}

ORDER=(direct palisade-allow-all palisade-10 palisade-100 palisade-1000 haproxy-100)

# --- direct ---------------------------------------------------------------
wait_port_ok
measure direct 0
RSS[direct]="-"

# --- Palisade -------------------------------------------------------------
# `palisade proxy` keeps SIGPIPE ignored (a client closing mid-write costs
# its connection, not the process); the bench used to block it as a workaround.
run_palisade() { # name rules
  if ip netns exec $NODE nft list table ip palisade_proxy >/dev/null 2>&1; then
    echo "$1: a previous proxy left its table behind" >&2; exit 1
  fi
  mkdir -p $WORK/m-$2; { cluster; policy $2; } > $WORK/m-$2/all.yaml
  taskset -c 1 $PAL proxy --manifests $WORK/m-$2 --node-netns $NODE --workers 1 --quiet --log warn &
  local pid=$!; PIDS+=($pid)
  for _ in $(seq 1 600); do # the proxy installs its table once its policy is built
    ip netns exec $NODE nft list table ip palisade_proxy >/dev/null 2>&1 && break
    kill -0 $pid 2>/dev/null || { echo "palisade proxy exited" >&2; exit 1; }
    sleep 0.1
  done
  wait_port_ok
  [ "$2" = 0 ] || { check_denied $1; check_denied_h2 $1; }
  measure $1 $pid
  alive $1 $pid
  eval "PID_$2=$pid"
}
stop() { kill $1 2>/dev/null || true; wait $1 2>/dev/null || true; }
run_palisade palisade-allow-all 0; stop $PID_0
run_palisade palisade-10 10; stop $PID_10
run_palisade palisade-1000 1000
latency palisade-1000 $PID_1000
alive palisade-1000 $PID_1000
stop $PID_1000
run_palisade palisade-100 100
latency palisade-100 $PID_100
alive palisade-100 $PID_100
rss_1000 palisade-100 $PID_100
stop $PID_100

# --- HAProxy --------------------------------------------------------------
haproxy_cfg 100 > $WORK/haproxy.cfg
haproxy -c -q -f $WORK/haproxy.cfg
tproxy_table 15002
taskset -c 1 ip netns exec $NODE haproxy -db -f $WORK/haproxy.cfg >$WORK/haproxy.log 2>&1 & HPID=$!; PIDS+=($HPID)
# Until HAProxy listens, TPROXY finds no socket and the request goes
# straight to the server (a 200 that proves nothing): wait for the socket.
for _ in $(seq 1 200); do
  ip netns exec $NODE ss -Hltn 'sport = :15002' | grep -q . && break
  kill -0 $HPID 2>/dev/null || { echo "haproxy exited:" >&2; cat $WORK/haproxy.log >&2; exit 1; }
  sleep 0.05
done
wait_port_ok
check_denied haproxy-100
check_denied_h2 haproxy-100
measure haproxy-100 $HPID
latency haproxy-100 $HPID
rss_1000 haproxy-100 $HPID
stop $HPID
ip netns exec $NODE nft delete table ip plb_bench

LAT_ORDER=(palisade-100 palisade-1000 haproxy-100)
for n in "${LAT_ORDER[@]}"; do # direct at each rate, for the added latency
  read -r DP50[$n] DP99[$n] < <(loadgen ${LRATE[$n]})
done
read -r DF50 DF99 < <(loadgen $FIXED)

# --- tables ---------------------------------------------------------------
echo
echo "L7 proxy benchmark ($(nproc) vCPU, ${DUR}s runs; proxy on CPU1, load and backend on CPU0)"
echo "wrk -t1 -c50, HTTP/1.1 keep-alive"
printf "| %-20s | %10s | %-26s | %-10s |\n" setup "req/s" "req/s per proxy core" "RSS@1000c"
printf "|%s|\n" "----------------------|------------|----------------------------|------------"
for n in "${ORDER[@]}"; do
  printf "| %-20s | %10s | %-26s | %-10s |\n" $n "${RPS[$n]:-}" "${CORE[$n]:-}" "${RSS[$n]:--}"
done
echo
echo "Latency at 50% load: loadgen, 20 connections, one request at a time each; max = closed loop;"
echo "then open loop at max/2, timed from each request's scheduled send; direct at the same rate"
printf "| %-20s | %9s | %9s | %9s | %9s | %9s | %9s | %9s | %9s |\n" setup "max" "req/s" "p50 us" "p99 us" "direct 50" "direct 99" "+p50 us" "+p99 us"
printf "|%s|\n" "----------------------|-----------|-----------|-----------|-----------|-----------|-----------|-----------|-----------"
for n in "${LAT_ORDER[@]}"; do
  printf "| %-20s | %9s | %9s | %9s | %9s | %9s | %9s | %9s | %9s |\n" $n "${LMAX[$n]}" "${LRATE[$n]}" "${P50[$n]}" "${P99[$n]}" "${DP50[$n]}" "${DP99[$n]}" \
    $(( P50[$n] - DP50[$n] )) $(( P99[$n] - DP99[$n] ))
done
echo
echo "Latency added at a fixed $FIXED req/s (loadgen, 20 connections), direct p50 $DF50 us, p99 $DF99 us:"
echo "proxy on CPU1 (its own), then moved onto CPU0 (shared with client and server)"
printf "| %-20s | %12s | %12s | %12s | %12s |\n" setup "+p50 own" "+p99 own" "+p50 shared" "+p99 shared"
printf "|%s|\n" "----------------------|--------------|--------------|--------------|--------------"
for n in "${LAT_ORDER[@]}"; do
  printf "| %-20s | %12s | %12s | %12s | %12s |\n" $n $(( F50[$n] - DF50 )) $(( F99[$n] - DF99 )) $(( S50[$n] - DF50 )) $(( S99[$n] - DF99 ))
done
echo
echo "h2load, h2c prior knowledge end to end (-t1 -c10 -m10, ${DUR}s after 1s warm-up)"
printf "| %-20s | %10s | %-26s | %8s |\n" setup "req/s" "req/s per proxy core" "not 2xx"
printf "|%s|\n" "----------------------|------------|----------------------------|----------"
for n in "${ORDER[@]}"; do
  printf "| %-20s | %10s | %-26s | %8s |\n" $n "${H2RPS[$n]:-}" "${H2CORE[$n]:-}" "${H2BAD[$n]:--}"
done
echo
ratio() { [ -n "$1" ] && [ -n "$2" ] && awk -v a=$1 -v b=$2 'BEGIN{printf "%.0f%%", 100*a/b}' || echo n/a; }
echo "Palisade-100 efficiency relative to HAProxy-100 (req/s per proxy core): wrk $(ratio "${CORE_N[palisade-100]}" "${CORE_N[haproxy-100]}"), h2load $(ratio "${H2CORE_N[palisade-100]}" "${H2CORE_N[haproxy-100]}")"
