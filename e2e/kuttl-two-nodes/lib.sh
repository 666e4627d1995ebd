# Helpers of the two-node scenarios (bash, sourced by kuttl step scripts; the
# working directory is the scenario's): the product suite's, plus node A / B.
# e2e/kuttl-run brings node B up (e2e/cluster/up --nodes 2) before this suite and
# removes it after. Every wait is bounded.
. "$(dirname "${BASH_SOURCE[0]}")/../kuttl-product/lib.sh"
NODE_A=architect-e2e-node
NODE_B=architect-e2e-node-b

node_of() { kubectl get pod -n "$NAMESPACE" "$1" -o jsonpath='{.spec.nodeName}'; }

# ready_pods APP: "name node" of the app's Ready pods not being deleted.
ready_pods() { kubectl get pods -n "$NAMESPACE" -l "app=$1" -o json --request-timeout=10s | python3 -c '
import json, sys
for p in json.load(sys.stdin)["items"]:
    conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
    if not p["metadata"].get("deletionTimestamp") and conds.get("Ready") == "True":
        print(p["metadata"]["name"], p["spec"]["nodeName"])'; }
# ready_count APP: how many; fails (no number) when the API does not answer.
ready_count() { local out; out=$(ready_pods "$1") || return 1; grep -c . <<<"$out" || true; }

# deploy_on_a FILE APP REPLICAS: applies FILE with node B cordoned (uncordoned
# whatever happens), so every pod of APP is scheduled on node A; waits until
# REPLICAS are Ready there.
deploy_on_a() {
  local rc=0
  kubectl cordon "$NODE_B"
  _deploy_on_a "$@" || rc=$?
  kubectl uncordon "$NODE_B"
  return $rc
}
_deploy_on_a() {
  local file=$1 app=$2 want=$3 i got=""
  kubectl apply -n "$NAMESPACE" -f "$file" || return 1
  for ((i = 0; i < 360; i++)); do
    got=$(ready_pods "$app") || true
    [[ $(grep -c . <<<"$got") == "$want" ]] && break
    sleep 0.5
  done
  echo "Ready pods of $app: ${got:-none}"
  [[ $(grep -c . <<<"$got") == "$want" ]] || { echo "not $want Ready pods of $app within 180s" >&2; return 1; }
  [[ $(awk '{print $2}' <<<"$got" | sort -u) == "$NODE_A" ]] || { echo "$app not all on $NODE_A" >&2; return 1; }
}

# ms_since START_NS: milliseconds since START_NS ($(date +%s%N)).
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

# drain_a: kubectl drain of node A (the daemon's DaemonSet pod stays); its
# output also in $STATE.drain.
drain_a() {
  kubectl drain "$NODE_A" --ignore-daemonsets --delete-emptydir-data --timeout=180s 2>&1 \
    | tee "$STATE.drain"
}

# sample_start NAME COMMAND...: runs COMMAND every 0.2 s in the background (at
# most 1500 times, ~5 minutes) and appends its output to $STATE.NAME, a line each;
# sample_stop NAME stops it. A failed sample (an API timeout) is just missing.
sample_start() {
  local name=$1; shift
  : >"$STATE.$name"; rm -f "$STATE.$name.stop"
  ( for ((i = 0; i < 1500; i++)); do
      [[ -e $STATE.$name.stop ]] && break
      out=$("$@" 2>/dev/null) && echo "$out" >>"$STATE.$name"
      sleep 0.2
    done ) &
  echo $! >"$STATE.$name.pid"
}
sample_stop() {
  local pid; pid=$(cat "$STATE.$1.pid")
  touch "$STATE.$1.stop"
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill "$pid" 2>/dev/null || true
}
