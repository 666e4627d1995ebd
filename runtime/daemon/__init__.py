"""The per-node daemon: telemetry -> engine.evaluate -> shim + packet hold (docs/daemon.md)."""

from architect.runtime.daemon.wiring import main

__all__ = ["main"]
