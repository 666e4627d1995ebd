"""Checkpoint and restore of running containers: runc + CRIU, and runsc (gVisor)."""

from architect.runtime.checkpoint.api import (
    AddressRewrite,
    Backend,
    CheckpointOptions,
    Container,
    FileInfo,
    Manifest,
    PayloadInfo,
    RestoreOptions,
    RestoreResult,
    Scope,
)
from architect.runtime.checkpoint.errors import (
    BackendUnavailable,
    CheckpointError,
    CheckpointFailed,
    ContainerNotFound,
    ImageCorrupt,
    ImageEmpty,
    ImageError,
    ImageMismatch,
    ImageMissing,
    ImageTruncated,
    RestoreFailed,
)

__all__ = [
    "RUNTIME_BACKENDS",
    "AddressRewrite",
    "Backend",
    "BackendUnavailable",
    "CheckpointError",
    "CheckpointFailed",
    "CheckpointOptions",
    "Container",
    "ContainerNotFound",
    "FileInfo",
    "ImageCorrupt",
    "ImageEmpty",
    "ImageError",
    "ImageMismatch",
    "ImageMissing",
    "ImageTruncated",
    "Manifest",
    "PayloadInfo",
    "RestoreFailed",
    "RestoreOptions",
    "RestoreResult",
    "Scope",
    "backend",
]

# Runtime class handler name -> backend name (the shim picks a backend by this).
RUNTIME_BACKENDS = {"runc-architect": "runc-criu", "runsc-architect": "runsc"}


def backend(name: str) -> Backend:
    """The backend called ``name`` ("runc-criu" or "runsc", or a runtime class name)."""
    name = RUNTIME_BACKENDS.get(name, name)
    if name == "runc-criu":
        from architect.runtime.checkpoint.runc import RuncCriuBackend

        return RuncCriuBackend()
    if name == "runsc":
        from architect.runtime.checkpoint.runsc import RunscBackend

        return RunscBackend()
    raise BackendUnavailable(name, "unknown checkpoint backend (want runc-criu or runsc)")
