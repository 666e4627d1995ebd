import sys

from architect.runtime.daemon.main import main

sys.exit(main(sys.argv[1:]))
