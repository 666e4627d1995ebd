"""The checkpoint interface: one small ABC, two backends (runc+CRIU, runsc).

A backend checkpoints a running container (runc: one container; runsc: the whole
sandbox, i.e. the pod) into an image directory, restores it from one, and
describes an image without restoring it. The image layout is in ``image.py``.
"""

from __future__ import annotations

import enum
import ipaddress
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class Scope(enum.Enum):
    """What one checkpoint holds."""

    CONTAINER = "container"  # runc + CRIU: one container's process tree
    SANDBOX = "sandbox"  # runsc: the whole gVisor sandbox (all containers of the pod)


@dataclass(frozen=True)
class Container:
    """A container as the OCI runtime knows it.

    ``bundle`` is the OCI bundle directory (config.json + rootfs) it runs from;
    ``state_root`` is the runtime's ``--root`` (None: the runtime's default).
    ``empty_dirs`` are host paths of the pod's emptyDir volumes: their content
    travels inside the image and is put back on restore (into the restoring
    container's own ``empty_dirs``, in the same order, when it names any).
    ``addresses`` are the pod's IPs: a checkpoint records them in the manifest so
    whoever restores elsewhere knows what to rewrite.
    """

    id: str
    bundle: Path
    state_root: Path | None = None
    pod_template_hash: str = ""
    empty_dirs: tuple[Path, ...] = ()
    addresses: tuple[IPAddress, ...] = ()


@dataclass(frozen=True)
class CheckpointOptions:
    leave_running: bool = False  # True: a pre-copy for migration; False: hibernate
    tcp_established: bool = True  # checkpoint established TCP connections
    # "auto" | "none" | "zstd" (see image.choose_compression) | "dir" (node-local layout)
    compression: str = "auto"


@dataclass(frozen=True)
class AddressRewrite:
    """Pod IPs to rewrite in socket images when restoring into another pod.

    With ``listeners``, listeners (and unconnected datagram sockets) bound to
    ``old`` become wildcard (0.0.0.0 / ::); with ``established``, connected
    sockets get ``new`` as their source. Pairs of the same family; an
    unspecified ``new`` (the new pod has no address of that family) rewrites
    listeners only.
    """

    old: IPAddress
    new: IPAddress
    listeners: bool = True
    established: bool = True


@dataclass(frozen=True)
class RestoreOptions:
    tcp_established: bool = True
    rewrites: tuple[AddressRewrite, ...] = ()
    # Restore into this bundle instead of the container's own (e.g. the
    # replacement pod's bundle, whose config.json names the new network namespace).
    bundle: Path | None = None
    # File descriptors (stdin, stdout, stderr) for the restored container: the
    # engine is started with them, and a container whose stdio were pipes gets
    # these in their place (runc's inherit-fd). None: /dev/null and log files.
    stdio: tuple[int, int, int] | None = None
    # Put the image's emptyDir content back (into Container.empty_dirs). False:
    # the container's emptyDirs are left exactly as they are (a local wake: the
    # volume never left the node, and other containers may have written to it).
    empty_dirs: bool = True


DEFAULT_CHECKPOINT = CheckpointOptions()
DEFAULT_RESTORE = RestoreOptions()


@dataclass(frozen=True)
class PayloadInfo:
    file: str  # file name inside the image directory
    compression: str  # "none" | "zstd" | "dir" (the payload is a directory)
    size: int  # bytes on disk
    sha256: str
    raw_size: int  # bytes of the uncompressed tar stream


@dataclass(frozen=True)
class FileInfo:
    path: str  # path inside the payload (tar member or file under payload/)
    size: int
    # The file's sha256; with chunks, that of the chunk list (image.chunk_root).
    sha256: str
    # A big file of the directory layout: sha256 of each chunk_size bytes, so that
    # both cores hash it (format_version 2). 0 / (): one digest of the whole file.
    chunk_size: int = 0
    chunks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """What ``describe`` returns and ``manifest.json`` holds."""

    format_version: int
    backend: str  # "runc-criu" | "runsc"
    backend_version: str  # e.g. "runc 1.1.5 / criu 4.1.1"
    scope: Scope
    container: str
    pod_template_hash: str
    created: str  # RFC 3339, UTC
    payload: PayloadInfo
    files: tuple[FileInfo, ...]
    empty_dirs: tuple[str, ...]  # host paths, in the order of the emptydir/<n> trees
    memory_bytes: int  # bytes of memory pages in the image (0 if unknown)
    addresses: tuple[str, ...] = ()  # the pod IPs at checkpoint time (may be empty)


@dataclass(frozen=True)
class RestoreResult:
    container: str
    pid: int  # the restored init process, as the host sees it
    manifest: Manifest
    seconds: float = 0.0
    details: dict[str, float] = field(default_factory=dict)  # phase -> seconds


class Backend(ABC):
    """A checkpoint engine. Implementations: RuncCriuBackend, RunscBackend."""

    name: ClassVar[str]
    scope: ClassVar[Scope]

    @abstractmethod
    async def version(self) -> str:
        """The engine's version string; raises BackendUnavailable if it is missing."""

    @abstractmethod
    async def checkpoint(
        self,
        container: Container,
        image_dir: Path,
        options: CheckpointOptions = DEFAULT_CHECKPOINT,
    ) -> Manifest:
        """Checkpoint ``container`` into the new directory ``image_dir``.

        Without ``leave_running`` the container's processes are gone afterwards
        and their memory released; the runtime's record of it is deleted.
        """

    @abstractmethod
    async def restore(
        self, container: Container, image_dir: Path, options: RestoreOptions = DEFAULT_RESTORE
    ) -> RestoreResult:
        """Verify ``image_dir`` then restore it as ``container`` (running, detached).

        Raises an ImageError before touching the runtime if the image is bad;
        on RestoreFailed nothing of the container is left running.
        """

    def describe(self, image_dir: Path, verify: bool = False) -> Manifest:
        """The manifest of ``image_dir``, its payload's presence and size checked;
        with ``verify`` every digest too (reads the whole image, writes nothing)."""
        from architect.runtime.checkpoint import image

        return image.verify(image_dir) if verify else image.read_manifest(image_dir)
