# Helpers of the product scenarios (sourced by kuttl step scripts, bash; the
# working directory is the scenario's). Every wait is bounded.
set -euo pipefail
STATUS_KEY=architect.loopholelabs.io/status
STATE=/tmp/architect-kuttl-product-${NAMESPACE}

# pod_name APP: the app's first pod not being deleted; pod_ip APP (or POD with -p).
pod_name() { live_pods "$1" | head -n1; }
pod_ip() { kubectl get pod -n "$NAMESPACE" "$(pod_name "$1")" -o jsonpath='{.status.podIP}'; }
ip_of() { kubectl get pod -n "$NAMESPACE" "$1" -o jsonpath='{.status.podIP}'; }

# wait_state APP CONTAINER STATE [SECONDS]: the status annotation Architect writes.
wait_state() {
  local app=$1 c=$2 want=$3 limit=${4:-120} i pod got=""
  for ((i = 0; i < limit * 4; i++)); do
    pod=$(pod_name "$app")
    if [[ -n $pod ]]; then
      got=$(state_of "$pod" "$c")
      [[ $got == "$want" ]] && return 0
    fi
    sleep 0.25
  done
  echo "$pod: $c never $want within ${limit}s (last: ${got:-none})" >&2
  return 1
}

# wait_listening APP: bare connects (no payload: not activity) until the app listens.
wait_listening() {
  local ip i; ip=$(pod_ip "$1")
  for ((i = 0; i < 240; i++)); do
    if timeout 2 bash -c "exec 3<>/dev/tcp/$ip/8080" 2>/dev/null; then return 0; fi
    sleep 0.25
  done
  echo "$ip:8080 never listened" >&2; return 1
}

# count APP: one GET; prints the counter the app answers with. count_pod POD: the same.
count() { curl -fsS --max-time 60 "http://$(pod_ip "$1"):8080/" | cut -d' ' -f1; }
count_pod() { curl -fsS --max-time 60 "http://$(ip_of "$1"):8080/" | cut -d' ' -f1; }
state_of() {  # state_of POD CONTAINER: Architect's status of one container
  kubectl get pod -n "$NAMESPACE" "$1" -o jsonpath="{.metadata.annotations.architect\.loopholelabs\.io/status}" \
    | python3 -c "import json,sys; t=sys.stdin.read(); print(json.loads(t or '{}').get('$2',''))"
}

# restarts APP / requests APP: of the managed container (an injected sidecar may come first).
restarts() { kubectl get pod -n "$NAMESPACE" "$(pod_name "$1")" -o jsonpath='{.status.containerStatuses[?(@.name=="'"$1"'-container")].restartCount}'; }
requests() { kubectl get pod -n "$NAMESPACE" "$(pod_name "$1")" -o jsonpath='{.spec.containers[?(@.name=="'"$1"'-container")].resources.requests}'; }
ready() { kubectl get pod -n "$NAMESPACE" "$(pod_name "$1")" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}'; }

# live_pods APP: names of the app's pods not being deleted.
live_pods() { kubectl get pods -n "$NAMESPACE" -l "app=$1" -o json | python3 -c '
import json, sys
for p in json.load(sys.stdin)["items"]:
    if not p["metadata"].get("deletionTimestamp"):
        print(p["metadata"]["name"])'; }

# replacement APP OLD [SECONDS]: waits for a Ready pod of APP other than OLD; prints it.
replacement() {
  local app=$1 old=$2 limit=${3:-120} i p
  for ((i = 0; i < limit * 2; i++)); do
    for p in $(live_pods "$app"); do
      [[ $p != "$old" ]] || continue
      if [[ $(kubectl get pod -n "$NAMESPACE" "$p" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]; then
        echo "$p"; return 0
      fi
    done
    sleep 0.5
  done
  echo "no Ready replacement of $old within ${limit}s" >&2; kubectl get events -n "$NAMESPACE" >&2; return 1
}

# checkpoint_phase NAME: the phase of Checkpoint NAME, or "gone".
checkpoint_phase() {
  kubectl get checkpoints.architect.loopholelabs.io -n "$NAMESPACE" "$1" -o jsonpath='{.status.phase}' 2>/dev/null || echo gone
}
# wait_checkpoint NAME PHASE [SECONDS]
wait_checkpoint() {
  local i got
  for ((i = 0; i < ${3:-120} * 4; i++)); do
    got=$(checkpoint_phase "$1"); [[ $got == "$2" ]] && return 0; sleep 0.25
  done
  echo "Checkpoint $1 never $2 (last: $got)" >&2; return 1
}
remember() { echo "$2" > "$STATE.$1"; }
recall() { cat "$STATE.$1"; }
