"""architect.policy"""

# The layer is reached through the architect/ symlinks only. Imported by its bare
# name (the repo root on sys.path) every module would load a second time: distinct
# exception classes, Prometheus metrics registered twice.
if __name__ != "architect.policy":
    raise ImportError(
        f"'{__name__}' is Architect's policy layer: import it as 'architect.policy' "
        "(the bare name would load a second copy of every module)"
    )
