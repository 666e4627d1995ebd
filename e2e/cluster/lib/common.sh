# Shared paths and helpers of the e2e/cluster scripts (sourced, bash).
# Everything `up` makes lives under these roots so `down` can remove exactly that.
here_lib=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$here_lib/versions.sh"

E2E_STATE=${E2E_STATE:-/var/lib/architect-e2e}       # pki, etcd data, kubelet root, containerd root
E2E_RUN=${E2E_RUN:-/run/architect-e2e}                # pids, sockets, containerd state
E2E_LOGS=${E2E_LOGS:-/var/log/architect-e2e}          # one log file per component
E2E_ETC=${E2E_ETC:-/etc/architect-e2e}                # drop-ins other parts of the project add
KUBECONFIG_PATH=$E2E_STATE/kubeconfig                 # the admin kubeconfig tests use
CONTEXT_NAME=architect-e2e
NODE_NAME=architect-e2e-node
CNI_NETWORK=architect-e2e                            # name in CNI iptables comments
CNI_BRIDGE=architect0
POD_CIDR=10.244.0.0/24                               # pod netns only, never leaves the host
SERVICE_CIDR=10.96.0.0/16
KUBERNETES_SVC_IP=10.96.0.1
APISERVER_PORT=6443
ETCD_CLIENT_PORT=2379
ETCD_PEER_PORT=2380
CONTAINERD_SOCK=$E2E_RUN/containerd/containerd.sock
NAT_CHAIN=ARCHITECT-E2E
KUBE_BIN=$K8S_BIN

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { printf 'e2e/cluster: %s\n' "$*" >&2; exit 1; }

# The address pods use to reach the host (and the API server through the
# kubernetes Service DNAT): the source address of the default route.
node_ip() {
  local ip
  ip=$(ip -4 route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p' | head -1)
  [[ -n $ip ]] || ip=$(hostname -I | awk '{print $1}')
  [[ -n $ip ]] || die "cannot find this host's IPv4 address (no default route)"
  echo "$ip"
}

pid_file() { echo "$E2E_RUN/pids/$1.pid"; }

is_running() {  # NAME: true when the recorded process is alive
  local f; f=$(pid_file "$1")
  [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

# start NAME CMD...: runs CMD detached in its own session, logging to $E2E_LOGS/NAME.log.
start() {
  local name=$1; shift
  if is_running "$name"; then log "$name: already running (pid $(cat "$(pid_file "$name")"))"; return 0; fi
  mkdir -p "$E2E_RUN/pids" "$E2E_LOGS"
  log "$name: starting"
  printf '\n===== %s start %s\n%s\n' "$(date -u +%FT%TZ)" "$name" "$*" >> "$E2E_LOGS/$name.log"
  # The daemon inherits no descriptor beyond stdio: not the up/down lock (see
  # lock_cluster), nor any lock or pipe of whoever ran us (`flock F up` would
  # otherwise leave F held by containerd for as long as it runs).
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if (( fd > 2 )); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec setsid nohup "$@" >> "$E2E_LOGS/$name.log" 2>&1 < /dev/null
  ) &
  echo $! > "$(pid_file "$name")"
}

# stop NAME: SIGTERM, then SIGKILL after 20 s; only the pid this harness recorded.
stop() {
  local name=$1 f pid i
  f=$(pid_file "$name")
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { log "$name: still alive, SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; sleep 0.5; }
  fi
  rm -f "$f"
}

# wait_until SECONDS WHAT CMD...: polls CMD every 0.5 s; fails naming WHAT and the logs.
# With WAIT_FOR set to a component name, fails at once if that component died.
wait_until() {
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [[ -n ${WAIT_FOR-} ]] && ! is_running "$WAIT_FOR"; then
      tail -n 15 "$E2E_LOGS/$WAIT_FOR.log" >&2 || true
      die "$WAIT_FOR exited while waiting for $what (log: $E2E_LOGS/$WAIT_FOR.log, last lines above)"
    fi
    if ((SECONDS >= deadline)); then
      die "timed out after ${limit}s waiting for $what (logs: $E2E_LOGS)"
    fi
    sleep 0.5
  done
}

kubectl_e2e() { "$KUBE_BIN/kubectl" --request-timeout 10s --kubeconfig "$KUBECONFIG_PATH" --context "$CONTEXT_NAME" "$@"; }
ctr_e2e() { ctr --address "$CONTAINERD_SOCK" "$@"; }

# Serialises up/down: several engineers' test sessions share this machine's cluster.
# The lock lives outside $E2E_RUN, which `down` removes.
lock_cluster() {
  exec 9> /run/architect-e2e-updown.lock
  flock -w 3600 9 || die "another e2e/cluster up/down held the lock for an hour"
}

# make_shared DIR: DIR is a mount point with shared propagation (idempotent).
make_shared() {
  mkdir -p "$1"
  mountpoint -q "$1" || mount --rbind "$1" "$1"
  mount --make-rshared "$1"
}
