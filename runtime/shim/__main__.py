"""``python -m architect.runtime.shim``: the containerd-shim-architect-v1 binary."""

import sys

# The shim never speaks TLS: without ssl (asyncio imports it only if it can) it
# maps less. OpenSSL's _hashlib stays: every image the shim packs, verifies or
# unpacks is hashed, and CPython's built-in sha256 is ~6x slower and holds the
# GIL (305 vs 1814 MB/s; a 256 MiB drain's pack 2.94 s of user CPU against
# 0.57 s), which stalls every pod's ttrpc answers meanwhile. It cost ~4 MiB of
# RSS, once per node now that one shim serves them all.
sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]

from architect.runtime.shim.binary import main  # noqa: E402

sys.exit(main())
