# Helpers of the product scenarios (sourced by kuttl step scripts, bash; the
# working directory is the scenario's). Every wait is bounded.
set -euo pipefail
STATUS_KEY=architect.loopholelabs.io/status
STATE=/tmp/architect-kuttl-product-${NAMESPACE}

pod_name() { kubectl get pods -n "$NAMESPACE" -l "app=$1" -o jsonpath='{.items[0].metadata.name}'; }
pod_ip() { kubectl get pods -n "$NAMESPACE" -l "app=$1" -o jsonpath='{.items[0].status.podIP}'; }

# wait_state APP CONTAINER STATE [SECONDS]: the status annotation Architect writes.
wait_state() {
  local app=$1 c=$2 want=$3 limit=${4:-120} i pod got
  pod=$(pod_name "$app")
  for ((i = 0; i < limit * 4; i++)); do
    got=$(kubectl get pod -n "$NAMESPACE" "$pod" -o jsonpath="{.metadata.annotations.architect\.loopholelabs\.io/status}")
    if [[ $(printf '%s' "${got:-{\}}" | python3 -c "import json,sys; print(json.load(sys.stdin).get('$c',''))") == "$want" ]]; then
      return 0
    fi
    sleep 0.25
  done
  echo "$pod: $c never $want within ${limit}s (status: ${got:-none})" >&2
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

# count APP: one GET; prints the counter the app answers with.
count() { curl -fsS --max-time 60 "http://$(pod_ip "$1"):8080/" | cut -d' ' -f1; }

restarts() { kubectl get pod -n "$NAMESPACE" "$(pod_name "$1")" -o jsonpath='{.status.containerStatuses[0].restartCount}'; }
requests() { kubectl get pod -n "$NAMESPACE" "$(pod_name "$1")" -o jsonpath='{.spec.containers[0].resources.requests}'; }
remember() { echo "$2" > "$STATE.$1"; }
recall() { cat "$STATE.$1"; }
