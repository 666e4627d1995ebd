"""architect.runtime"""

# The layer is reached through the architect/ symlinks only. Imported by its bare
# name (the repo root on sys.path) every module would load a second time: distinct
# exception classes, Prometheus metrics registered twice.
if __name__ != "architect.runtime":
    raise ImportError(
        f"'{__name__}' is Architect's runtime layer: import it as 'architect.runtime' "
        "(the bare name would load a second copy of every module)"
    )
