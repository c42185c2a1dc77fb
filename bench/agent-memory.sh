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
[ "$BIN" != ./target/release/palisade ] || cargo build --release -q -p palisade # never a stale binary
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
# Kernel memory of the pinned maps: bytes_memlock from bpftool for every
# map pinned under the pin root (whatever maps the datapath has).
maps_kib() {
  local sum=0 n=0 b
  for f in $(find $PIN -type f 2>/dev/null); do
    # Pinned programs and links fail `map show`: they count 0.
    b=$(bpftool map show pinned "$f" -j 2>/dev/null | python3 -c '
import json, sys
try: print(int(json.load(sys.stdin).get("bytes_memlock", 0)))
except Exception: print(0)') || true
    if [ "$b" -gt 0 ]; then sum=$((sum + b)); n=$((n + 1)); fi
  done
  echo "$((sum / 1024)) $n"
}
# The same from the agent's own map fds (/proc/PID/fdinfo memlock), each
# map counted once (by map_id).
fdinfo_kib() {
  python3 - "$AGENT_PID" <<'PY'
import os, sys
pid = sys.argv[1]; seen = {}
for fd in os.listdir(f"/proc/{pid}/fdinfo"):
    try:
        kv = dict(l.split(":", 1) for l in open(f"/proc/{pid}/fdinfo/{fd}") if ":" in l)
    except OSError:
        continue
    if "map_id" in kv and "memlock" in kv:
        seen[kv["map_id"].strip()] = int(kv["memlock"])
print(sum(seen.values()) // 1024, len(seen))
PY
}
now_ms() { date +%s%3N; }
start() {
  $BIN agent --node-netns $NODE --pin-root $PIN --state-dir $T/state --manifests $T/m --socket $T/sock \
    --pod-cidr 10.246.0.0/24 --node-name local >$T/agent.log 2>&1 &
  AGENT_PID=$!
  for i in $(seq 300); do $BIN status --socket $T/sock >/dev/null 2>&1 && break; sleep 0.1; done
}
start
EMPTY=$(rss)
# The reader takes at most ~1,000 documents per file: one file per 1,000
# pods, written aside and moved in (the watcher never sees a partial file).
mkdir -p $T/gen
python3 - "$REMOTE" "$T/gen" <<'PY'
import sys
n, out = int(sys.argv[1]), sys.argv[2]
head = ["apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {kubernetes.io/metadata.name: default}}",
        "apiVersion: v1\nkind: Node\nmetadata: {name: remote}\nstatus: {addresses: [{type: InternalIP, address: 192.168.50.2}]}",
        """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: local-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {role: local}}
  ingress:
    - fromEndpoints: [{matchLabels: {role: local}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]"""]
open(f"{out}/00-cluster.yaml", "w").write("\n---\n".join(head) + "\n")
for c in range(0, n, 1000):
    docs = ["apiVersion: v1\nkind: Pod\nmetadata: {name: r%d, namespace: default, labels: {app: svc-%d}}\nspec: {nodeName: remote}\nstatus: {podIP: 10.%d.%d.%d}"
            % (i, i, 100 + i // 65536, (i // 256) % 256, i % 256) for i in range(c, min(n, c + 1000))]
    open(f"{out}/pods-{c // 1000:03d}.yaml", "w").write("\n---\n".join(docs) + "\n")
PY
for f in $T/gen/*.yaml; do mv "$f" $T/m/; done
T0=$(now_ms); ids=0
for i in $(seq 1200); do
  ids=$($BIN status --socket $T/sock -o json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["identities"])' 2>/dev/null || echo 0)
  [ "${ids:-0}" -ge "$REMOTE" ] && break; sleep 0.2
done
[ "${ids:-0}" -ge "$REMOTE" ] || { echo "the agent never reached $REMOTE identities (at ${ids:-0})" >&2; exit 1; }
LOAD_MS=$(( $(now_ms) - T0 ))
echo "cluster state loaded: $ids identities in $LOAD_MS ms" >&2
WITH_IDS=$(rss)
RUN_MS=(); T0=$(now_ms)
for i in $(seq $LOCAL); do
  t=$(now_ms)
  $BIN pod run default/l$i --labels role=local,idx=l$i --socket $T/sock >/dev/null
  RUN_MS+=($(( $(now_ms) - t )))
  # The first local pod resolves the first endpoint (a full rebuild).
  [ "$i" = 1 ] && WITH_ONE=$(rss)
done
RUN_TOTAL=$(( $(now_ms) - T0 ))
WITH_PODS=$(rss)
read MAPS NMAPS < <(maps_kib)
read FDMAPS NFD < <(fdinfo_kib)
RUN_SORTED=$(printf '%s\n' "${RUN_MS[@]}" | sort -n)
RUN_P50=$(echo "$RUN_SORTED" | sed -n "$(( (LOCAL + 1) / 2 ))p")
RUN_MAX=$(echo "$RUN_SORTED" | tail -1)
# Deleting a pod (after the memory figures): Engine::delete_pod re-resolves.
DEL=5; T0=$(now_ms)
for i in $(seq $DEL); do $BIN pod delete default/l$i --socket $T/sock >/dev/null; done
DEL_MS=$(( ($(now_ms) - T0) / DEL ))
echo "| state | agent RSS (KiB) |"
echo "|---|---|"
echo "| empty (no pods, reserved identities only) | $EMPTY |"
echo "| + $ids identities (remote pods in the cluster state) | $WITH_IDS |"
echo "| + 1 local pod (the first endpoint: one full rebuild) | $WITH_ONE |"
echo "| + $LOCAL local pods (endpoints with policy) | $WITH_PODS |"
echo "| per identity (cluster state) | $(( (WITH_IDS - EMPTY) * 1024 / ids )) bytes |"
echo "| per local pod (pods 2..$LOCAL) | $(( (WITH_PODS - WITH_ONE) / (LOCAL - 1) )) KiB |"
echo "| pinned BPF maps (bytes_memlock, bpftool, $NMAPS maps) | $MAPS KiB |"
echo "| BPF maps held by the agent (fdinfo memlock, $NFD maps) | $FDMAPS KiB |"
echo
echo "| operation | time |"
echo "|---|---|"
echo "| load $ids identities (manifests directory, $(( (REMOTE + 999) / 1000 + 1 )) files moved in) | $LOAD_MS ms |"
echo "| pod run at $ids identities (mean over $LOCAL, CLI round trip) | $(( RUN_TOTAL / LOCAL )) ms |"
echo "| pod run, median / max | $RUN_P50 / $RUN_MAX ms |"
echo "| pod delete (mean over $DEL) | $DEL_MS ms |"
echo "Anchor: Cilium's agent grows about 10.5 KiB per pod in the cluster."
