# Locally built images (see e2e/images/build.py; `install` writes the index).
# Sourced after common.sh, once `install` has run.

_image_index=$ARCHITECT_CACHE/images/index.txt
[[ -f $_image_index ]] || die "no image index at $_image_index: run e2e/cluster/install"
_image_ref() { awk -v n="$1" '$1 == n {print $2}' "$_image_index"; }
_image_tar() { awk -v n="$1" '$1 == n {print $3}' "$_image_index"; }
PAUSE_IMAGE=$(_image_ref pause)
BUSYBOX_IMAGE=$(_image_ref busybox)
PYTHON_IMAGE=$(_image_ref python)

ensure_images() {
  local n
  for n in pause busybox python; do
    [[ -n $(_image_ref "$n") && -f $(_image_tar "$n") ]] || die "image $n missing: run e2e/cluster/install"
  done
}

# Import each archive into containerd's k8s.io namespace unless that exact
# manifest is already there.
import_images() {
  local n ref tar have want
  for n in pause busybox python; do
    ref=$(_image_ref "$n"); tar=$(_image_tar "$n")
    want=$(tar -xOf "$tar" index.json | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifests"][0]["digest"])')
    have=$(ctr_e2e -n k8s.io images ls -q "name==$ref" 2>/dev/null | head -1)
    if [[ -n $have ]] && ctr_e2e -n k8s.io images ls "name==$ref" | grep -q "$want"; then continue; fi
    log "images: importing $ref"
    ctr_e2e -n k8s.io images import "$tar" >/dev/null
    ctr_e2e -n k8s.io images ls -q "name==$ref" | grep -qx "$ref" \
      || die "images: $ref not in containerd after importing $tar"
  done
}
