"""``python -m architect.runtime.shim``: the containerd-shim-architect-v1 binary."""

import sys

from architect.runtime.shim.main import main

sys.exit(main())
