"""The one error every command line of Architect raises for a bad flag or
environment value (exit code 2, as ``architect.cli`` says). Imports nothing of
Architect, so every layer, the shim and the network's sidecar included, may use it."""

from __future__ import annotations


class UsageError(ValueError):
    """A bad flag or environment value; the message names it and the value."""
