import sys

from architect.runtime.daemon.wiring import main

sys.exit(main(sys.argv[1:]))
