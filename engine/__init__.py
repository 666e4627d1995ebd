"""architect.engine"""

# The layer is reached through the architect/ symlinks only. Imported by its bare
# name (the repo root on sys.path) every module would load a second time: distinct
# exception classes, Prometheus metrics registered twice.
if __name__ != "architect.engine":
    raise ImportError(
        f"'{__name__}' is Architect's engine layer: import it as 'architect.engine' "
        "(the bare name would load a second copy of every module)"
    )
