# Pinned versions of everything the e2e cluster builds; cache keys derive from these.
# Sourced by the e2e/cluster scripts.
K8S_VERSION=v1.33.13          # k8s.io/kubernetes; staging modules are v0.${K8S_VERSION#v1.}
ETCD_VERSION=v3.5.35          # go.etcd.io/etcd/server/v3
KUTTL_VERSION=v0.26.0         # github.com/kudobuilder/kuttl/cmd/kubectl-kuttl
HELM_VERSION=v3.21.4          # helm.sh/helm/v3/cmd/helm

ARCHITECT_CACHE=${ARCHITECT_CACHE:-/var/cache/architect}
K8S_BIN=$ARCHITECT_CACHE/kubernetes-$K8S_VERSION/bin
ETCD_BIN=$ARCHITECT_CACHE/etcd-$ETCD_VERSION/bin
TOOLS_BIN=$ARCHITECT_CACHE/e2e-tools-kuttl-$KUTTL_VERSION-helm-$HELM_VERSION/bin
