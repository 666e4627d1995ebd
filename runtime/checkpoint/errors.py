"""Typed errors of the checkpoint backends.

Every error carries the place it is about (a container id or an image path) and a
message a person can act on; callers show ``str(err)``, never a traceback.
"""

from __future__ import annotations

from pathlib import Path


class CheckpointError(Exception):
    """Base of every error raised by architect.runtime.checkpoint."""

    def __init__(self, where: str | Path, message: str) -> None:
        self.where = str(where)
        self.message = message
        super().__init__(f"{self.where}: {message}")


class BackendUnavailable(CheckpointError):
    """The engine (runc, criu, runsc) is missing or unusable on this node."""


class ContainerNotFound(CheckpointError):
    """The runtime does not know the container (or it is not running)."""


class CheckpointFailed(CheckpointError):
    """The engine failed to checkpoint; the container is left as the engine left it."""

    def __init__(self, where: str | Path, message: str, log: str = "") -> None:
        # The engine's own error lines are what an operator needs to see.
        super().__init__(where, f"{message}\n{log}" if log else message)
        self.log = log


class RestoreFailed(CheckpointError):
    """The engine failed to restore; no half-restored container is left behind."""

    def __init__(self, where: str | Path, message: str, log: str = "") -> None:
        # The engine's own error lines are what an operator needs to see.
        super().__init__(where, f"{message}\n{log}" if log else message)
        self.log = log


class ImageError(CheckpointError):
    """A checkpoint image cannot be used. Raised before anything is restored."""


class ImageMissing(ImageError):
    """The image directory, its manifest or its payload does not exist."""


class ImageEmpty(ImageError):
    """The image exists but holds nothing (zero-length manifest or payload)."""


class ImageTruncated(ImageError):
    """The payload is shorter than the manifest says."""


class ImageCorrupt(ImageError):
    """The manifest is invalid, or the payload does not match its digests."""


class ImageMismatch(ImageError):
    """The image is valid but made by another backend than the one restoring it."""
