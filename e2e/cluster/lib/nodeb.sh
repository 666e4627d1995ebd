# The optional second node (`up --nodes 2`): node B, a second kubelet + containerd
# on this machine (sourced after common.sh, pki.sh, config.sh and images.sh).
#
# The chart's DaemonSet uses the same host paths on every node (kubelet root,
# containerd state, /run/architect, ...), so node B runs in a mount namespace of
# its own where those paths are bind mounts of node B's directories, and in a
# network namespace of its own (a veth to the host, its own CNI bridge and pod
# CIDR, routes both ways). One holder process (`nodeb-ns`, `sleep infinity`) owns
# both namespaces; node B's containerd and kubelet are started into them with
# nsenter. Node B's pods get their cgroups under /$NODEB_CGROUP/kubepods.

NODEB_NAME=architect-e2e-node-b
NODEB_STATE=$E2E_STATE/node-b        # node B's directories as the host sees them
NODEB_RUN=$E2E_RUN/node-b
NODEB_SOCK=$NODEB_RUN/containerd/containerd.sock   # B's containerd socket, from the host
NODEB_VETH_HOST=arche2e-b-host
NODEB_VETH_NODE=arche2e-b-node
NODEB_HOST_IP=172.31.250.1           # the host's end of the veth (/30)
NODEB_IP=172.31.250.2                # node B's InternalIP
NODEB_POD_CIDR=10.244.1.0/24
NODEB_BRIDGE=architect1
NODEB_CNI_NETWORK=architect-e2e-b
NODEB_CGROUP=architect-e2e-b
# target (the path the chart and the node's own config use) -> node B's source.
NODEB_BINDS=(
  "$E2E_STATE/kubelet=$NODEB_STATE/kubelet"
  "$E2E_STATE/containerd=$NODEB_STATE/containerd"
  "$E2E_STATE/cni=$NODEB_STATE/cni"
  "$E2E_STATE/architect=$NODEB_STATE/architect"
  "$E2E_STATE/architect-config=$NODEB_STATE/architect-config"
  "$E2E_RUN/containerd=$NODEB_RUN/containerd"
  "$E2E_RUN/runc=$NODEB_RUN/runc"
  "/run/architect=$NODEB_RUN/architect"
  # Shim sockets (/run/containerd/s/<sha256 of containerd's address, namespace,
  # group>): node B's containerd has node A's socket path, so without its own
  # directory its shim start found node A's running shim and shared it (a shim
  # in node A's mount namespace, which cannot see node B's bundles).
  "/run/containerd=$NODEB_RUN/run-containerd"
  "/var/lib/architect=$NODEB_STATE/var-lib-architect"
  # Each kubelet's container GC deletes log directories of pods it does not know.
  "/var/log/pods=$NODEB_STATE/var-log-pods"
  "/var/log/containers=$NODEB_STATE/var-log-containers"
)

nodeb_exists() { is_running nodeb-ns; }

# in_host_namespaces "$0" "$@": re-executes the script in the host's namespaces
# when it runs inside node B's. The product's node install on node B restarts
# containerd by running `up` beside a containerd process, which may be node B's;
# up there would see node B's address as the host's (and remake the whole PKI).
in_host_namespaces() {
  local anchor pid
  # Whether or not node B still exists (a node install can outlive its holder's
  # pid file during down --node-b): the control plane runs in the host's network
  # namespace, so a different one is node B's.
  for anchor in kube-apiserver etcd; do
    is_running "$anchor" || continue
    pid=$(cat "$(pid_file "$anchor")")
    [[ $(readlink /proc/self/ns/net) == "$(readlink "/proc/$pid/ns/net")" ]] && return 0
    exec nsenter -t "$pid" -m -n -u -i -- "$@"
  done
  if nodeb_exists && [[ $(readlink /proc/self/ns/net) == "$(readlink "/proc/$(nodeb_holder)/ns/net")" ]]; then
    die "running inside node B's namespaces and no host process to leave them by"
  fi
  return 0
}
nodeb_holder() { cat "$(pid_file nodeb-ns)"; }
# in_nodeb CMD...: CMD in node B's mount and network namespaces.
in_nodeb() { nsenter -t "$(nodeb_holder)" -m -n -- "$@"; }

# The holder: new mount + network namespaces (slave propagation: host mounts
# still flow in, node B's never flow out), node B's binds made shared mounts
# (the kubelet's HostToContainer check), then it sleeps.
_nodeb_holder_script() {
  local b t s
  echo 'set -e'
  echo 'ip link set lo up'
  for b in "${NODEB_BINDS[@]}"; do
    t=${b%%=*}; s=${b#*=}
    printf 'mkdir -p %q %q; mount --bind %q %q; mount --make-rshared %q\n' "$t" "$s" "$s" "$t" "$t"
  done
  printf 'touch %q\n' "$NODEB_RUN/ns-ready"
  echo 'exec sleep infinity'
}

_nodeb_network() {
  local holder=$1 ip=$2
  ip link show "$NODEB_VETH_HOST" >/dev/null 2>&1 && ip link delete "$NODEB_VETH_HOST"
  ip link add "$NODEB_VETH_HOST" type veth peer name "$NODEB_VETH_NODE" netns "$holder"
  ip addr add "$NODEB_HOST_IP/30" dev "$NODEB_VETH_HOST"
  ip link set "$NODEB_VETH_HOST" up
  ip route replace "$NODEB_POD_CIDR" via "$NODEB_IP" dev "$NODEB_VETH_HOST"
  nsenter -t "$holder" -n ip addr add "$NODEB_IP/30" dev "$NODEB_VETH_NODE"
  nsenter -t "$holder" -n ip link set "$NODEB_VETH_NODE" up
  nsenter -t "$holder" -n ip route add default via "$NODEB_HOST_IP"
  # sysctl writes /proc/sys/net of the caller's network namespace: node B's.
  nsenter -t "$holder" -n sysctl -qw net.ipv4.ip_forward=1
  # The kubernetes Service for node B's pods and hostNetwork pods (its daemon).
  nsenter -t "$holder" -n iptables -t nat -N "$NAT_CHAIN"
  nsenter -t "$holder" -n iptables -t nat -A "$NAT_CHAIN" -d "$KUBERNETES_SVC_IP/32" -p tcp --dport 443 \
    -j DNAT --to-destination "$ip:$APISERVER_PORT"
  nsenter -t "$holder" -n iptables -t nat -I PREROUTING -j "$NAT_CHAIN"
  nsenter -t "$holder" -n iptables -t nat -I OUTPUT -j "$NAT_CHAIN"
}

# Node B's kubelet credentials: its own node identity (NodeRestriction) and a
# serving certificate for its address; the API server at the host's address.
_nodeb_pki() {
  local ip=$1
  if [[ ! -f $PKI/kubelet-b.crt || ! -f $PKI/kubelet-b-serving.crt ]]; then
    _cert kubelet-b-serving "/CN=$NODEB_NAME" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$NODEB_NAME,DNS:localhost,IP:127.0.0.1,IP:$NODEB_IP"
    _cert kubelet-b "/O=system:nodes/CN=system:node:$NODEB_NAME" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  fi
  _kubeconfig "$NODEB_STATE/kubelet.kubeconfig" "system:node:$NODEB_NAME" kubelet-b
  sed -i "s#server: https://127.0.0.1:#server: https://$ip:#" "$NODEB_STATE/kubelet.kubeconfig"
}

# Node B's generated files, written through the host's view of its directories.
_nodeb_configs() {
  local ip=$1
  # containerd: node A's text verbatim (same paths; they resolve to B's inside
  # its mount namespace), runtime drop-ins included.
  write_containerd_config
  mkdir -p "$NODEB_STATE/containerd"
  cp "$E2E_STATE/containerd/config.toml" "$NODEB_STATE/containerd/config.toml.new"
  mv "$NODEB_STATE/containerd/config.toml.new" "$NODEB_STATE/containerd/config.toml"
  mkdir -p "$NODEB_STATE/cni/net.d" "$NODEB_STATE/cni/ipam"
  sed -e "s#\"name\": \"$CNI_NETWORK\"#\"name\": \"$NODEB_CNI_NETWORK\"#" \
      -e "s#\"bridge\": \"$CNI_BRIDGE\"#\"bridge\": \"$NODEB_BRIDGE\"#" \
      -e "s#\"subnet\": \"$POD_CIDR\"#\"subnet\": \"$NODEB_POD_CIDR\"#" \
      "$E2E_STATE/cni/net.d/10-$CNI_NETWORK.conflist" > "$NODEB_STATE/cni/net.d/10-$NODEB_CNI_NETWORK.conflist"
  rm -f "$NODEB_STATE/cni/net.d/10-$CNI_NETWORK.conflist"
  sed -e "s#kubelet-serving\.#kubelet-b-serving.#g" "$E2E_STATE/kubelet-config.yaml" > "$NODEB_STATE/kubelet-config.yaml"
  printf 'cgroupRoot: /%s\n' "$NODEB_CGROUP" >> "$NODEB_STATE/kubelet-config.yaml"
  _nodeb_pki "$ip"
}

# The kubelet wants its cgroupRoot to exist in every hierarchy; cpuset needs
# its cpus/mems filled before anything can join.
_nodeb_cgroups() {
  local sub
  for sub in /sys/fs/cgroup/*/; do
    [[ -d $sub && ${sub%/} != /sys/fs/cgroup/unified ]] || continue
    mkdir -p "$sub$NODEB_CGROUP"
    if [[ -f $sub/cpuset.cpus ]]; then
      cat "$sub/cpuset.cpus" > "$sub$NODEB_CGROUP/cpuset.cpus"
      cat "$sub/cpuset.mems" > "$sub$NODEB_CGROUP/cpuset.mems"
    fi
  done
}

# up_nodeb IP: node B up (idempotent); containerd restarted when its config changed.
up_nodeb() {
  local ip=$1 old_conf
  mkdir -p "$NODEB_STATE" "$NODEB_RUN"
  if ! nodeb_exists; then
    rm -f "$NODEB_RUN/ns-ready"
    _nodeb_holder_script > "$NODEB_RUN/holder.sh"
    start nodeb-ns unshare --net --mount --propagation slave sh "$NODEB_RUN/holder.sh"
    WAIT_FOR=nodeb-ns wait_until 20 "node B's namespaces" test -f "$NODEB_RUN/ns-ready"
    _nodeb_network "$(nodeb_holder)" "$ip"
  fi
  _nodeb_cgroups
  old_conf=$(cat "$NODEB_STATE/containerd/config.toml" 2>/dev/null || true)
  _nodeb_configs "$ip"
  if is_running containerd-b && [[ $old_conf != "$(cat "$NODEB_STATE/containerd/config.toml")" ]]; then
    log "containerd-b: configuration changed, restarting"
    stop containerd-b
  fi
  start containerd-b nsenter -t "$(nodeb_holder)" -m -n -- /usr/bin/containerd --config "$E2E_STATE/containerd/config.toml"
  WAIT_FOR=containerd-b wait_until 60 "node B's containerd socket" ctr --address "$NODEB_SOCK" version
  CONTAINERD_SOCK=$NODEB_SOCK import_images
  start kubelet-b nsenter -t "$(nodeb_holder)" -m -n -- "$KUBE_BIN/kubelet" \
    --config "$NODEB_STATE/kubelet-config.yaml" \
    --kubeconfig "$NODEB_STATE/kubelet.kubeconfig" --root-dir "$E2E_STATE/kubelet" \
    --hostname-override "$NODEB_NAME" --node-ip "$NODEB_IP"
  WAIT_FOR=kubelet-b wait_until 180 "node $NODEB_NAME Ready" \
    kubectl_e2e wait --for=condition=Ready "node/$NODEB_NAME" --timeout=5s
  log "node B ready ($NODEB_NAME at $NODEB_IP, pods $NODEB_POD_CIDR)"
}

# down_nodeb: node B's pods' processes, containerd, kubelet, namespaces, veth,
# route and cgroups (the API objects go with etcd's data).
down_nodeb() {
  local c sub pid pids i netns
  stop kubelet-b
  if is_running containerd-b; then
    for c in $(ctr --address "$NODEB_SOCK" -n k8s.io containers ls -q 2>/dev/null); do
      timeout 15 ctr --address "$NODEB_SOCK" -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    done
    sleep 1
    for c in $(ctr --address "$NODEB_SOCK" -n k8s.io containers ls -q 2>/dev/null); do
      timeout 15 ctr --address "$NODEB_SOCK" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
      timeout 15 ctr --address "$NODEB_SOCK" -n k8s.io containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
  stop containerd-b
  # Whatever still runs in node B's pod cgroups (a shim's orphan, a restored task).
  for ((i = 0; i < 20; i++)); do
    pids=$(cat /sys/fs/cgroup/*/"$NODEB_CGROUP"/kubepods/cgroup.procs \
      $(find /sys/fs/cgroup/*/"$NODEB_CGROUP" -mindepth 2 -name cgroup.procs 2>/dev/null) 2>/dev/null | sort -u || true)  # none: no node B cgroups
    [[ -z $pids ]] && break
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    sleep 0.5
  done
  # Node B's shims and hostNetwork containers share its network namespace.
  if nodeb_exists; then
    netns=$(readlink "/proc/$(nodeb_holder)/ns/net")
    echo "$netns" > "$E2E_RUN/nodeb-netns"
    _nodeb_netns_pids "$netns" | while read -r pid; do
      [[ $pid == "$(nodeb_holder)" ]] || kill -KILL "$pid" 2>/dev/null || true
    done
  fi
  stop nodeb-ns
  ip route del "$NODEB_POD_CIDR" 2>/dev/null || true
  ip link show "$NODEB_VETH_HOST" >/dev/null 2>&1 && ip link delete "$NODEB_VETH_HOST"
  for sub in /sys/fs/cgroup/*/; do
    [[ -d $sub$NODEB_CGROUP ]] || continue
    find "$sub$NODEB_CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  return 0
}

_nodeb_netns_pids() {  # NETNS-LINK: pids whose network namespace it is
  local p
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/ns/net" 2>/dev/null) == "$1" ]] && echo "${p#/proc/}"
  done
  return 0
}

# What down checks for node B (names of leftovers, one per line).
nodeb_leftovers() {
  local name
  for name in nodeb-ns containerd-b kubelet-b; do
    is_running "$name" && echo "process $name"
  done
  ip link show "$NODEB_VETH_HOST" >/dev/null 2>&1 && echo "veth $NODEB_VETH_HOST"
  ip route show "$NODEB_POD_CIDR" | grep -q . && echo "route $NODEB_POD_CIDR"
  compgen -G "/sys/fs/cgroup/*/$NODEB_CGROUP" >/dev/null && echo "cgroups /$NODEB_CGROUP"
  if [[ -f $E2E_RUN/nodeb-netns ]]; then
    [[ -n $(_nodeb_netns_pids "$(cat "$E2E_RUN/nodeb-netns")") ]] && echo "processes in node B's network namespace"
  fi
  return 0
}
