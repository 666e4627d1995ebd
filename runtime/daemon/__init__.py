"""The per-node daemon: telemetry -> engine.evaluate -> shim + packet hold (docs/daemon.md)."""

from architect.runtime.daemon.main import main

__all__ = ["main"]
