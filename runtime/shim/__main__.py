"""``python -m architect.runtime.shim``: the containerd-shim-architect-v1 binary."""

import sys

# The shim never speaks TLS and hashes only a socket name: without ssl (asyncio
# imports it only if it can) and OpenSSL's _hashlib (hashlib falls back to its
# built-in sha256), libcrypto stays unmapped, about 4 MiB less RSS in each shim.
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
sys.modules.setdefault("_hashlib", None)  # type: ignore[arg-type]

from architect.runtime.shim.binary import main  # noqa: E402

sys.exit(main())
