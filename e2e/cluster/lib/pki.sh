# Certificates, keys and kubeconfigs of the e2e cluster (sourced after common.sh).
# Made once per node address; `down` removes them with the rest of $E2E_STATE.

PKI=$E2E_STATE/pki

_key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; chmod 600 "$1"; }

# _cert NAME SUBJECT EXT: key + certificate signed by the cluster CA.
_cert() {
  local name=$1 subj=$2 ext=$3
  _key "$PKI/$name.key"
  openssl req -new -key "$PKI/$name.key" -subj "$subj" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile <(printf '%s\n' "$ext") -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr"
}

# _kubeconfig FILE USER CERTNAME: self-contained kubeconfig with the one context
# the test fixtures accept.
_kubeconfig() {
  local file=$1 user=$2 cert=$3
  cat > "$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: $CONTEXT_NAME
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 < "$PKI/ca.crt")
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 < "$PKI/$cert.crt")
    client-key-data: $(base64 -w0 < "$PKI/$cert.key")
contexts:
- name: $CONTEXT_NAME
  context: {cluster: $CONTEXT_NAME, user: $user}
current-context: $CONTEXT_NAME
KC
  chmod 600 "$file"
}

ensure_pki() {
  local ip=$1 client='basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth'
  if [[ -f $PKI/.complete && $(cat "$PKI/.complete") == "$ip" ]]; then return 0; fi
  log "pki: making certificates for node address $ip"
  rm -rf "$PKI"; mkdir -p "$PKI"; chmod 700 "$PKI"
  _key "$PKI/ca.key"
  openssl req -x509 -new -key "$PKI/ca.key" -subj "/CN=architect-e2e-ca" -days 3650 -sha256 \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
  _cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:$NODE_NAME,IP:127.0.0.1,IP:$ip,IP:$KUBERNETES_SVC_IP"
  _cert kubelet-serving "/CN=$NODE_NAME" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$NODE_NAME,DNS:localhost,IP:127.0.0.1,IP:$ip"
  # system:masters: the API server needs full kubelet access for logs/exec/port-forward.
  _cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  _cert admin "/O=system:masters/CN=architect-e2e-admin" "$client"
  _cert controller-manager "/CN=system:kube-controller-manager" "$client"
  _cert scheduler "/CN=system:kube-scheduler" "$client"
  _cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  # RSA: the signing key of service-account tokens (RS256 is what every client expects).
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null; chmod 600 "$PKI/sa.key"
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  _kubeconfig "$E2E_STATE/controller-manager.kubeconfig" system:kube-controller-manager controller-manager
  _kubeconfig "$E2E_STATE/scheduler.kubeconfig" system:kube-scheduler scheduler
  _kubeconfig "$E2E_STATE/kubelet.kubeconfig" "system:node:$NODE_NAME" kubelet
  _kubeconfig "$KUBECONFIG_PATH" architect-e2e-admin admin
  echo "$ip" > "$PKI/.complete"
}
