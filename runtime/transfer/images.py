"""Where transfer images live on a node, and what the Checkpoint records of them.

The shim leaves a handover checkpoint as the engine's raw image files in
``handover/<template hash>/<container>/`` (marked ``ready``). To move between
nodes it is packed once into the runtime/checkpoint image format
(``manifest.json`` + one payload stream) under
``outgoing/<hash>/<container>/<manifest sha256>/``: one per Checkpoint, so a second
replica's handover of the same template (a drain, pods evicted one by one) never
replaces or drops the image a first one's transfer still needs.

The Checkpoint's ``spec.image`` records ``digest`` = sha256 of manifest.json and
``sizeBytes`` = manifest + payload bytes. The manifest holds the payload's
sha256 and every file's, so the ticket's digest (signed by the control plane)
pins every byte that moves: ticket -> manifest -> payload -> files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from architect.engine.controlplane.transfer import TransferError
from architect.runtime.checkpoint import Scope, image
from architect.runtime.checkpoint.errors import CheckpointError
from architect.runtime.shim.plan import (
    CLAIMED_MARK,
    NAMESPACE_MARK,
    NOTHING_MARK,
    PENDING_MARK,
    READY_MARK,
    handover_dir,
)

OUTGOING = "outgoing"
HANDOVER = "handover"
MARKS = frozenset({READY_MARK, PENDING_MARK, NAMESPACE_MARK, CLAIMED_MARK, NOTHING_MARK})
# The daemon's scratch directories: a fetch's beside the handover directory it
# fills (client.fetch: the shim writes in handover/ too, so only this name), and
# any hidden one under outgoing/ (only the daemon writes there: export's staging,
# the hard-linked snapshot it packs from, the packer's own scratch).
_FETCH_SCRATCH = re.compile(r"\.[^/]+\.incoming-[0-9a-f]{8}")
_PACK_SCRATCH = re.compile(r"\..+")


@dataclass(frozen=True)
class ImageRef:
    """What the source daemon writes into the Checkpoint's ``spec.image``."""

    location: str
    digest: str
    size_bytes: int

    def as_spec(self) -> dict[str, Any]:
        return {"location": self.location, "digest": self.digest, "sizeBytes": self.size_bytes}


def component(value: str, what: str) -> str:
    """A template hash or container name used as one path component."""
    if not value or value in (".", "..") or "/" in value or "\0" in value or value.startswith("."):
        raise TransferError(f"{what} {value!r} cannot name a directory")
    return value


_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")


def digest_component(digest: str) -> str:
    """The directory name of a packed image: its manifest's sha256, hex."""
    m = _DIGEST.fullmatch(digest)
    if m is None:
        raise TransferError(f"image digest {digest!r} is not sha256:<64 hex digits>")
    return m.group(1)


def outgoing_dir(
    root: Path, template_hash: str, container: str, digest: str | None = None
) -> Path:
    """The packed images of (template hash, container); with ``digest``, that one."""
    d = root / OUTGOING / component(template_hash, "template hash") / component(
        container, "container")
    return d if digest is None else d / digest_component(digest)


def incoming_dir(root: Path, template_hash: str, container: str, slot: str) -> Path:
    """The shim's handover directory ``slot`` (plan.source_slot: what a pod deleted
    here left; plan.destination_slot: where a download for a pod is put)."""
    return handover_dir(
        root, component(template_hash, "template hash"), component(container, "container"),
        component(slot, "handover slot"),
    )


def image_ref(image_dir: Path, location: str) -> ImageRef:
    """Digest (of manifest.json) and total size of a packed image."""
    try:
        m = image.read_manifest(image_dir)  # checks the payload's presence and size
    except CheckpointError as e:
        raise TransferError(str(e)) from None
    raw = (image_dir / image.MANIFEST).read_bytes()
    return ImageRef(
        location, "sha256:" + hashlib.sha256(raw).hexdigest(), len(raw) + m.payload.size
    )


def export(
    root: Path,
    node: str,
    template_hash: str,
    container: str,
    slot: str,
    *,
    backend: str = "runc-criu",
    backend_version: str = "",
    compression: str = "auto",
) -> ImageRef:
    """Pack the ready handover image ``template_hash/container/slot`` for transfer.

    Returns what the Checkpoint's ``spec.image`` records. The packed image
    appears under ``outgoing/`` all at once (built aside, then renamed).
    """
    src = incoming_dir(root, template_hash, container, slot)
    if not (src / READY_MARK).exists():
        raise TransferError(f"no ready handover image in {src}")
    out = outgoing_dir(root, template_hash, container)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{container}.export-{uuid.uuid4().hex[:8]}"
    try:
        image.pack(
            staging,
            src,
            (),
            backend=backend,
            backend_version=backend_version,
            scope=Scope.CONTAINER,
            container=container,
            pod_template_hash=template_hash,
            memory_bytes=_size(src),
            compression=compression,
        )
        digest = image_ref(staging, "").digest
        final = out / digest_component(digest)
        out.mkdir(exist_ok=True)
        if final.is_dir():  # the same bytes packed before (a daemon restart): keep those
            shutil.rmtree(staging)
        else:
            os.rename(staging, final)
    except CheckpointError as e:
        raise TransferError(str(e)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return image_ref(
        final, f"node://{node}/{OUTGOING}/{template_hash}/{container}/{final.name}")


def scratch_dirs(root: Path) -> list[Path]:
    """Half-written images the daemon left under ``root`` when it was killed
    mid-fetch or mid-pack (a finished or failed one removes its own): the
    shim's scratch directories (a repack into a handover directory) and a
    PersistentCheckpoint's are not these. Call it when no fetch or pack of this
    daemon runs: at its start."""
    found: list[Path] = []
    # A fetch's sits beside the handover slot it fills (handover/<hash>/<container>/),
    # a pack's under outgoing/ or outgoing/<hash>/.
    for sub, pattern, depth in ((HANDOVER, _FETCH_SCRATCH, 2), (OUTGOING, _PACK_SCRATCH, 1)):
        level = [root / sub]
        for _ in range(depth + 1):
            below: list[Path] = []
            for base in level:
                if not base.is_dir() or base.is_symlink():
                    continue
                for d in base.iterdir():
                    if pattern.fullmatch(d.name):
                        found.append(d)
                    elif d.is_dir() and not d.name.startswith("."):
                        below.append(d)
            level = below
    return sorted(e for e in found if e.is_dir() and not e.is_symlink())


def remove_outgoing(root: Path, template_hash: str, container: str, digest: str) -> None:
    """Drop a packed image once its Checkpoint is Consumed or deleted (and the
    directories of its template hash and container, when it was the last)."""
    d = outgoing_dir(root, template_hash, container)
    shutil.rmtree(d / digest_component(digest), ignore_errors=True)
    for empty in (d, d.parent):
        with contextlib.suppress(OSError):  # another image of theirs remains
            empty.rmdir()


def _size(d: Path) -> int:
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and p.name not in MARKS)
