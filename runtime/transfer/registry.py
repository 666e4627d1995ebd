"""A PersistentCheckpoint's image in an OCI registry: push and pull as an OCI artifact.

A small client of the OCI distribution API (``/v2/``), over urllib3 (already
installed with the kubernetes client; it streams request and response bodies
and pools connections). Not oras-py: it pulls in requests and a Docker-auth
stack for a handful of calls, and does not verify blob digests on pull.

The artifact: an OCI image manifest whose config blob records what it is (the
PersistentCheckpoint and the digest of the image's ``manifest.json``) and one
layer per file of the checkpoint directory, titled with its relative path
(``org.opencontainers.image.title``, as oras does). Marks (ready, pending, the
grant) never travel.

Chain of trust on pull: the object's status pins the OCI manifest's digest
(``location`` = ``host/repo:tag@sha256:...``) and the checkpoint manifest's
(``digest``). The manifest the tag names must hash to the pinned one (a missing
tag or a tag moved to other bytes is refused), every blob to its descriptor's
digest and size while it streams in, the ``manifest.json`` layer to the
object's digest; the shim checks every file against ``manifest.json`` again
when it restores. Anything wrong raises ``RegistryError`` with why.

``parse_reference``, ``location``, ``layer_path`` and ``build_manifest`` are pure
(table-tested); ``Registry`` does the I/O (blocking: call it from a thread).
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from architect.engine.controlplane.transfer import DigestVerifier, TransferError
from architect.runtime.shim import plan

MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.architect.persistentcheckpoint.config.v1+json"
LAYER_TYPE = "application/vnd.architect.checkpoint.file.v1"
TITLE = "org.opencontainers.image.title"
CHECKPOINT_MANIFEST = "manifest.json"
MAX_MANIFEST = 4 << 20  # the distribution API's own limit on a manifest
CHUNK = 1 << 20
TIMEOUT = 30.0  # seconds to connect / between reads: a registry that stops answering fails

# distribution's reference grammar, the parts a repository reference uses.
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
_REF = re.compile(
    rf"^(?P<host>{_HOST})/(?P<repo>{_COMPONENT}(?:/{_COMPONENT})*)"
    rf"(?::(?P<tag>{_TAG}))?(?:@(?P<digest>sha256:[a-f0-9]{{64}}))?$"
)
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


class RegistryError(Exception):
    """The registry refused, did not answer, or answered with other bytes than pinned."""


@dataclass(frozen=True)
class Reference:
    host: str  # host[:port]
    repository: str
    tag: str
    digest: str = ""  # sha256:... of the OCI manifest, when pinned

    def __str__(self) -> str:
        return location(self, self.digest)


def parse_reference(text: str, default_tag: str = "latest") -> Reference:
    """``host[:port]/repo[/more][:tag][@sha256:...]``; the host is required (there is
    no default registry: an image holding process memory goes where it is told)."""
    m = _REF.match(text.strip())
    if m is None:
        raise RegistryError(
            f"{text!r} is not a registry reference: expected HOST[:PORT]/REPOSITORY[:TAG], "
            "e.g. registry.local:5000/checkpoints/app")
    host = m["host"]
    if "." not in host and ":" not in host and host != "localhost":
        raise RegistryError(f"{text!r}: the first part must be a registry host "
                            "(with a dot or a port), e.g. registry.local:5000/...")
    return Reference(host, m["repo"], m["tag"] or default_tag, m["digest"] or "")


def default_tag(namespace: str, name: str) -> str:
    """The tag a PersistentCheckpoint's image gets when its reference names none:
    namespace and name (a namespace has no dot, so the first dot splits them)."""
    tag = re.sub(r"[^A-Za-z0-9._-]", "-", f"{namespace}.{name}")
    return tag[:128]


def location(ref: Reference, digest: str) -> str:
    """``host/repo:tag@digest``: the status' location pins the manifest's bytes."""
    out = f"{ref.host}/{ref.repository}:{ref.tag}"
    return f"{out}@{digest}" if digest else out


def plain_http(host: str, insecure: Iterable[str] = ()) -> bool:
    """HTTP for loopback and the hosts listed as insecure; HTTPS for the rest (as docker)."""
    if host in set(insecure):
        return True
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def layer_path(desc: Mapping[str, Any]) -> PurePosixPath:
    """A layer's file path from its title; refuses anything that leaves the directory."""
    title = str((desc.get("annotations") or {}).get(TITLE) or "")
    p = PurePosixPath(title)
    if not title or p.is_absolute() or any(part in ("", ".", "..") for part in title.split("/")) \
            or "\\" in title or "\x00" in title:
        raise RegistryError(f"layer {desc.get('digest')} has no safe file name ({title!r})")
    return p


def descriptor(media_type: str, digest: str, size: int, title: str = "") -> dict[str, Any]:
    d: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if title:
        d["annotations"] = {TITLE: title}
    return d


def build_manifest(config: Mapping[str, Any], layers: Sequence[Mapping[str, Any]]) -> bytes:
    """The OCI manifest's bytes (canonical: sorted keys, no spaces), pushed as they are."""
    body = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": dict(config),
            "layers": [dict(x) for x in layers]}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def check_manifest(raw: bytes, pinned: str, checkpoint_digest: str) -> dict[str, Any]:
    """The pulled manifest, checked: its bytes hash to ``pinned``, it is our artifact,
    it has a ``manifest.json`` layer with ``checkpoint_digest``, file names are safe."""
    got = "sha256:" + hashlib.sha256(raw).hexdigest()
    if pinned and got != pinned:
        raise RegistryError(f"digest mismatch: the tag names manifest {got}, "
                            f"the PersistentCheckpoint records {pinned}")
    try:
        m = json.loads(raw)
        config, layers = m["config"], list(m["layers"])
    except (ValueError, KeyError, TypeError):
        raise RegistryError("the registry's manifest is not an OCI image manifest") from None
    if not isinstance(config, dict) or config.get("mediaType") != CONFIG_TYPE:
        raise RegistryError("the manifest is not a PersistentCheckpoint image "
                            f"(config {config.get('mediaType') if isinstance(config, dict) else config!r})")
    names = set()
    for desc in [config, *layers]:
        if not isinstance(desc, dict) or not _DIGEST.match(str(desc.get("digest", ""))) \
                or not isinstance(desc.get("size"), int) or desc["size"] < 0:
            raise RegistryError(f"bad descriptor in the manifest: {desc!r}")
    for desc in layers:
        p = layer_path(desc)
        if str(p) in names:
            raise RegistryError(f"the manifest names file {p} twice")
        names.add(str(p))
        if str(p) == CHECKPOINT_MANIFEST and checkpoint_digest and \
                desc["digest"] != checkpoint_digest:
            raise RegistryError(f"digest mismatch: the image's {CHECKPOINT_MANIFEST} is "
                                f"{desc['digest']}, the PersistentCheckpoint records "
                                f"{checkpoint_digest}")
    if CHECKPOINT_MANIFEST not in names:
        raise RegistryError(f"the image has no {CHECKPOINT_MANIFEST}")
    return dict(m)


def files_of(d: Path, skip: Iterable[str]) -> list[tuple[str, Path]]:
    """(relative path, file) of every file the image is made of, marks excluded."""
    skipped = set(skip)
    out = []
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d).as_posix()
        if p.is_file() and not p.is_symlink() and rel not in skipped:
            out.append((rel, p))
    return out


def sha256_file(p: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with p.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
    return "sha256:" + h.hexdigest(), n


@dataclass(frozen=True)
class Pushed:
    location: str  # host/repo:tag@sha256:<manifest>
    manifest_digest: str
    size_bytes: int  # every blob and the manifest
    blobs_uploaded: int  # the rest were in the registry already


class Registry:
    """Blocking calls to one registry host (plain HTTP or HTTPS with the system's CAs)."""

    def __init__(self, host: str, insecure: Iterable[str] = (), timeout: float = TIMEOUT,
                 ca_certs: str | None = None) -> None:
        import urllib3

        self.host = host
        self.base = ("http" if plain_http(host, insecure) else "https") + f"://{host}"
        self.http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout, read=timeout),
            retries=urllib3.Retry(total=2, connect=2, read=0, redirect=3, status=0,
                                  allowed_methods=None, raise_on_status=False),
            ca_certs=ca_certs)

    def _call(self, method: str, url: str, *, body: Any = None,
              headers: Mapping[str, str] | None = None, stream: bool = False) -> Any:
        import urllib3

        full = url if url.startswith("http") else self.base + url
        try:
            return self.http.request(method, full, body=body, headers=dict(headers or {}),
                                     preload_content=not stream, redirect=True)
        except urllib3.exceptions.HTTPError as e:
            raise RegistryError(f"registry {self.host}: {method} {url}: {e}") from None

    @staticmethod
    def _fail(resp: Any, what: str) -> RegistryError:
        try:
            errs = json.loads(resp.data or b"{}").get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs)
        except (ValueError, AttributeError):
            detail = ""
        return RegistryError(f"{what}: HTTP {resp.status}" + (f" ({detail})" if detail else ""))

    def ping(self) -> None:
        resp = self._call("GET", "/v2/")
        if resp.status != 200:
            raise self._fail(resp, f"registry {self.host} does not serve the OCI distribution API")

    def has_blob(self, repo: str, digest: str) -> bool:
        resp = self._call("HEAD", f"/v2/{repo}/blobs/{digest}")
        return bool(resp.status == 200)

    def push_blob(self, repo: str, digest: str, size: int, body: bytes | BinaryIO) -> None:
        """POST an upload, then PUT all of it with its digest (the registry checks it)."""
        resp = self._call("POST", f"/v2/{repo}/blobs/uploads/")
        if resp.status != 202 or not resp.headers.get("Location"):
            raise self._fail(resp, f"start of the upload of {digest} to {self.host}/{repo}")
        loc = resp.headers["Location"]
        if loc.startswith("/"):
            loc = self.base + loc
        loc += ("&" if "?" in loc else "?") + f"digest={digest}"
        resp = self._call("PUT", loc, body=body, headers={
            "Content-Type": "application/octet-stream", "Content-Length": str(size)})
        if resp.status != 201:
            raise self._fail(resp, f"upload of {digest} to {self.host}/{repo}")

    def push_dir(self, ref: Reference, d: Path, config: Mapping[str, Any],
                 skip: Iterable[str] = ()) -> Pushed:
        """Every file of ``d`` as a layer (blobs the registry has are not sent again),
        the config, then the manifest under ``ref.tag``."""
        self.ping()
        layers, size, uploaded = [], 0, 0
        for rel, p in files_of(d, skip):
            digest, n = sha256_file(p)
            layers.append(descriptor(LAYER_TYPE, digest, n, rel))
            size += n
            if not self.has_blob(ref.repository, digest):
                with p.open("rb") as f:
                    self.push_blob(ref.repository, digest, n, f)
                uploaded += 1
        if CHECKPOINT_MANIFEST not in {x["annotations"][TITLE] for x in layers}:
            raise RegistryError(f"{d} has no {CHECKPOINT_MANIFEST}: not a sealed checkpoint")
        cfg = json.dumps(dict(config), sort_keys=True, separators=(",", ":")).encode()
        cdigest = "sha256:" + hashlib.sha256(cfg).hexdigest()
        if not self.has_blob(ref.repository, cdigest):
            self.push_blob(ref.repository, cdigest, len(cfg), cfg)
            uploaded += 1
        manifest = build_manifest(descriptor(CONFIG_TYPE, cdigest, len(cfg)), layers)
        mdigest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        resp = self._call("PUT", f"/v2/{ref.repository}/manifests/{ref.tag}", body=manifest,
                          headers={"Content-Type": MANIFEST_TYPE})
        if resp.status != 201:
            raise self._fail(resp, f"push of the manifest to {ref.host}/{ref.repository}:{ref.tag}")
        echoed = resp.headers.get("Docker-Content-Digest")
        if echoed and echoed != mdigest:
            raise RegistryError(f"the registry stored the manifest as {echoed}, not {mdigest}")
        size += len(cfg) + len(manifest)
        return Pushed(location(ref, mdigest), mdigest, size, uploaded)

    def pull_manifest(self, ref: Reference) -> bytes:
        resp = self._call("GET", f"/v2/{ref.repository}/manifests/{ref.tag}",
                          headers={"Accept": MANIFEST_TYPE}, stream=True)
        try:
            if resp.status == 404:
                raise RegistryError(f"tag {ref.tag} not found in {ref.host}/{ref.repository}")
            if resp.status != 200:
                resp.read()
                raise self._fail(resp, f"manifest {ref.host}/{ref.repository}:{ref.tag}")
            raw = resp.read(MAX_MANIFEST + 1)
            if len(raw) > MAX_MANIFEST:
                raise RegistryError(f"manifest {ref} is larger than {MAX_MANIFEST} bytes")
            return bytes(raw)
        finally:
            resp.release_conn()

    def pull_blob(self, repo: str, desc: Mapping[str, Any], out: BinaryIO) -> None:
        """Stream a blob into ``out``, checking its size and sha256 on the way."""
        digest, size = str(desc["digest"]), int(desc["size"])
        resp = self._call("GET", f"/v2/{repo}/blobs/{digest}", stream=True)
        try:
            if resp.status != 200:
                resp.read()
                raise self._fail(resp, f"blob {digest} of {self.host}/{repo}")
            # The mutual-TLS transfer's own check: size and sha256 while it streams.
            try:
                check = DigestVerifier(digest, size)
                for chunk in resp.stream(CHUNK):
                    check.update(chunk)
                    out.write(chunk)
                check.finish()
            except TransferError as e:
                raise RegistryError(f"blob {digest}: {e}") from None
        finally:
            resp.release_conn()

    def pull_dir(self, ref: Reference, d: Path, checkpoint_digest: str) -> dict[str, Any]:
        """Every layer into ``d`` (which must exist), each checked; the config returned."""
        m = check_manifest(self.pull_manifest(ref), ref.digest, checkpoint_digest)
        for desc in m["layers"]:
            dest = d / layer_path(desc)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with dest.open("wb") as f:
                self.pull_blob(ref.repository, desc, f)
        buf = io.BytesIO()
        self.pull_blob(ref.repository, m["config"], buf)
        try:
            config: dict[str, Any] = json.loads(buf.getvalue())
        except ValueError:
            raise RegistryError("the image's config is not JSON") from None
        return config

    def close(self) -> None:
        self.http.clear()


# --- a PersistentCheckpoint's directory in the shim's state ------------------

# Files of the directory that are the node's bookkeeping, not the image.
MARKS = frozenset({plan.READY_MARK, plan.PENDING_MARK, plan.NAMESPACE_MARK, plan.GRANT_FILE,
                   plan.GRANT_FILE + ".tmp", plan.UNAVAILABLE_MARK})


def push_checkpoint(d: Path, reference: str, namespace: str, name: str,
                    insecure: Iterable[str] = ()) -> Pushed:
    """Push the sealed image in ``d`` (the shim's, marked ready) to ``reference``."""
    if not (d / plan.READY_MARK).exists():
        raise RegistryError(f"{d} holds no sealed image")
    ref = parse_reference(reference, default_tag(namespace, name))
    if ref.digest:
        raise RegistryError(f"{reference!r}: a push names a tag, not a digest")
    reg = Registry(ref.host, insecure)
    try:
        return reg.push_dir(ref, d, {"namespace": namespace, "name": name,
                                     "checkpointDigest": plan.manifest_digest(d)}, MARKS)
    finally:
        reg.close()


def pull_checkpoint(location_: str, digest: str, d: Path, namespace: str,
                    allowed: list[str], insecure: Iterable[str] = ()) -> None:
    """Pull the image at ``location_`` (pinned by its manifest digest) into ``d``, which
    holds the pending mark; on success the grant and ``ready`` (before pending goes),
    else no image file stays and ``unavailable`` says why. Raises RegistryError."""
    try:
        ref = parse_reference(location_)
        if not ref.digest:
            raise RegistryError(f"{location_!r} pins no manifest digest")
        reg = Registry(ref.host, insecure)
        try:
            reg.pull_dir(ref, d, digest)
        finally:
            reg.close()
        got = plan.manifest_digest(d)
        if got != digest:  # check_manifest saw the layer's digest; this is the bytes'
            raise RegistryError(f"digest mismatch: {CHECKPOINT_MANIFEST} is {got}, "
                                f"the PersistentCheckpoint records {digest}")
        (d / plan.NAMESPACE_MARK).write_text(namespace, encoding="utf-8")
        plan.write_grant(d, namespace, allowed, digest)
        (d / plan.READY_MARK).touch()
        (d / plan.PENDING_MARK).unlink(missing_ok=True)
    except (RegistryError, OSError) as e:
        mark_unavailable(d, f"pull from the registry failed: {e}")
        raise RegistryError(str(e)) from None


def mark_unavailable(d: Path, why: str) -> None:
    """No image in ``d``, and why (the shim starts fresh with it); pending goes last."""
    for p in sorted(d.iterdir(), reverse=True) if d.is_dir() else ():
        if p.name in (plan.PENDING_MARK, plan.UNAVAILABLE_MARK):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (plan.UNAVAILABLE_MARK + ".tmp")
    tmp.write_text(why, encoding="utf-8")
    tmp.replace(d / plan.UNAVAILABLE_MARK)
    (d / plan.PENDING_MARK).unlink(missing_ok=True)
