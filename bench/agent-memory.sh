#!/usr/bin/env bash
# Agent resident memory: empty, then with 10,000 identities in the cluster
# state (remote pods with distinct labels, from the manifests directory),
# then with 100 local pods; plus the kernel memory of the pinned maps
# (bpftool). Private agent, node namespace and pin root. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-./target/release/palisade}
REMOTE=${REMOTE:-10000}; LOCAL=${LOCAL:-100}
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
[ -x "$BIN" ] || cargo build --release -q -p palisade
T=/tmp/palisade-membench-$$; NODE=pal-mem-$$; PIN=/sys/fs/bpf/palisade-membench-$$
mkdir -p $T/m
AGENT_PID=
cleanup() {
  [ -n "$AGENT_PID" ] && kill -9 $AGENT_PID 2>/dev/null || true
  for n in $(ls /var/run/netns 2>/dev/null | grep "^$NODE" || true); do ip netns del $n 2>/dev/null || true; done
  rm -rf $PIN $T
}
trap cleanup EXIT
rss() { awk '/VmRSS/ {print $2}' /proc/$AGENT_PID/status; }
maps_kib() {
  local sum=0
  for m in endpoints ipcache policy conntrack policy_revision counters events; do
    b=$(bpftool map show pinned $PIN/$m -j 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("bytes_memlock",0))' || echo 0)
    sum=$((sum + b))
  done
  echo $((sum / 1024))
}
start() {
  $BIN agent --node-netns $NODE --pin-root $PIN --state-dir $T/state --manifests $T/m --socket $T/sock \
    --pod-cidr 10.246.0.0/24 --node-name local >$T/agent.log 2>&1 &
  AGENT_PID=$!
  for i in $(seq 300); do $BIN status --socket $T/sock >/dev/null 2>&1 && break; sleep 0.1; done
}
start
EMPTY=$(rss)
python3 - "$REMOTE" > $T/m/cluster.yaml <<'PY'
import sys
n = int(sys.argv[1])
print("apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {kubernetes.io/metadata.name: default}}")
print("---\napiVersion: v1\nkind: Node\nmetadata: {name: remote}\nstatus: {addresses: [{type: InternalIP, address: 192.168.50.2}]}")
for i in range(n):
    print("---\napiVersion: v1\nkind: Pod\nmetadata: {name: r%d, namespace: default, labels: {app: svc-%d}}\nspec: {nodeName: remote}\nstatus: {podIP: 10.%d.%d.%d}" % (i, i, 100 + i // 65536, (i // 256) % 256, i % 256))
print("""---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: local-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {role: local}}
  ingress:
    - fromEndpoints: [{matchLabels: {role: local}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]""")
PY
for i in $(seq 600); do
  ids=$($BIN status --socket $T/sock -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["identities"])')
  [ "$ids" -ge "$REMOTE" ] && break; sleep 0.2
done
WITH_IDS=$(rss)
for i in $(seq $LOCAL); do $BIN pod run default/l$i --labels role=local,idx=l$i --socket $T/sock >/dev/null; done
WITH_PODS=$(rss)
MAPS=$(maps_kib)
echo "| state | agent RSS (KiB) |"
echo "|---|---|"
echo "| empty (no pods, reserved identities only) | $EMPTY |"
echo "| + $ids identities (remote pods in the cluster state) | $WITH_IDS |"
echo "| + $LOCAL local pods (endpoints with policy) | $WITH_PODS |"
echo "| per identity (cluster state) | $(( (WITH_IDS - EMPTY) * 1024 / ids )) bytes |"
echo "| per local pod | $(( (WITH_PODS - WITH_IDS) / LOCAL )) KiB |"
echo "| pinned BPF maps (bytes_memlock, all 7 maps) | $MAPS KiB |"
echo "Anchor: Cilium's agent grows about 10.5 KiB per pod in the cluster."
