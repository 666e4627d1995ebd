"""Architect: hibernate idle Kubernetes containers and wake them on demand."""

__version__ = "0.1.0"
