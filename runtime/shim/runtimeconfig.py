"""Which OCI runtime a Create asks for: containerd's task options, read (pure but
for the runtime's TOML config file)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import any_pb2

from architect.runtime.shim.pb import runc_options_pb2, runtime_options_pb2
from architect.runtime.shim.ttrpc import Code, TtrpcError

RUNC_OPTIONS_URL = "containerd.runc.v1.Options"
RUNTIME_OPTIONS_URL = "runtimeoptions.v1.Options"


@dataclass(frozen=True)
class RuntimeConfig:
    binary: str = "runc"
    flags: tuple[str, ...] = ()  # global flags for every call, e.g. runsc's --network=none


def runtime_config(opt: any_pb2.Any) -> RuntimeConfig:
    """The OCI runtime named by containerd's task options (default runc).

    runc's Options carry ``binary_name``. CRI hands runtimes it does not know a
    ``runtimeoptions.v1.Options`` whose ``config_path`` names a TOML file (the
    ``ConfigPath`` of the runtime's options in containerd's config); ours holds
    ``binary_name = "runsc"`` for runsc-architect and, like gVisor's own shim,
    a ``[runsc_config]`` table of runsc flags.
    """
    if opt.type_url.endswith(RUNC_OPTIONS_URL):
        o = runc_options_pb2.Options()
        o.ParseFromString(opt.value)
        return RuntimeConfig(o.binary_name or "runc")
    if opt.type_url.endswith(RUNTIME_OPTIONS_URL):
        ro = runtime_options_pb2.Options()
        ro.ParseFromString(opt.value)
        if ro.config_path:
            return config_file(Path(ro.config_path))
    return RuntimeConfig()


def config_file(path: Path) -> RuntimeConfig:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise TtrpcError(Code.INVALID_ARGUMENT, f"runtime config {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise TtrpcError(Code.INVALID_ARGUMENT, f"runtime config {path}: not TOML: {e}") from e
    binary = data.get("binary_name", "runc")
    if not isinstance(binary, str) or Path(binary).name not in ("runc", "runsc"):
        raise TtrpcError(
            Code.INVALID_ARGUMENT,
            f"runtime config {path}: binary_name {binary!r}: want runc or runsc",
        )
    table = data.get("runsc_config", {})
    if not isinstance(table, dict) or not all(
        isinstance(v, str | bool | int) for v in table.values()
    ):
        raise TtrpcError(
            Code.INVALID_ARGUMENT,
            f"runtime config {path}: runsc_config: want a table of flag = value",
        )
    flags = tuple(
        f"--{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(table.items())
    )
    return RuntimeConfig(binary, flags)
