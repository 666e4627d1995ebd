"""Checkpoint images between nodes: the source daemon's HTTPS server, the
destination daemon's client, over mutual TLS with control-plane tickets."""

from architect.engine.controlplane.transfer import Grant, TransferError, grant_from_data
from architect.runtime.transfer.client import fetch, mark_pending
from architect.runtime.transfer.images import ImageRef, export, image_ref, remove_outgoing
from architect.runtime.transfer.server import DEFAULT_PORT, TransferServer, serve
from architect.runtime.transfer.tls import NodeTLS, ticket_key_from_dir

__all__ = [
    "DEFAULT_PORT",
    "Grant",
    "ImageRef",
    "NodeTLS",
    "TransferError",
    "TransferServer",
    "export",
    "fetch",
    "grant_from_data",
    "image_ref",
    "mark_pending",
    "remove_outgoing",
    "serve",
    "ticket_key_from_dir",
]
