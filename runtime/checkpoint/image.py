"""Checkpoint image format: ``manifest.json`` beside one payload tar stream.

    <image>/manifest.json      backend, versions, container, sizes, sha256 digests
    <image>/payload.tar[.zst]  engine/...      the engine's own image files
                               emptydir/<n>/... the n-th emptyDir volume's content

One stream is easy to move (a registry blob, a socket); the digest of the
stream and of every file in it is checked while unpacking, into a scratch
directory that is removed if anything is wrong, so a bad image never reaches the
engine.

An image that stays on its node (a hibernation) may instead keep its payload as
a directory (``compression="dir"``: ``<image>/payload/engine/...``): no tar
stream to write and read back, only one hashing pass each way. Every file's
digest is checked just the same before the engine sees a byte; the payload's
digest is then that of the manifest's file list. An image that leaves the node
is packed as a stream (``runtime.transfer`` packs the handover directory).

A directory-layout image can also be verified where it lies
(``verify_in_place``): the engine then reads the image itself, no copy. With a
``Seal`` taken right after the checkpoint hashed the files (every file's inode,
size, mtime and ctime), a file whose stat is still exactly that is not hashed
again: its content is the one whose digest the manifest records, since any write,
truncate, rename or replacement through the filesystem changes its ctime or
inode. Every other file is hashed; the entry set is always checked.

Hashing is the hibernate's cost beyond the engine's own dump (SHA-256 runs near
1.1 GB/s per core here), so the directory layout hashes a big file (the memory
pages) as chunks of ``HASH_CHUNK`` bytes, each with its own digest in the
manifest (format_version 2), and every file's pieces on all cores at once
(hashlib releases the GIL on big buffers). The file's ``sha256`` is then the
digest of its chunk list, which the listing digest covers; every chunk is
checked wherever the file is verified. An image leaving the node is a stream
with whole-file digests (format_version 1, what older nodes read); a registry
layer's whole-file sha256 is computed by the registry client itself.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import logging
import os
import re
import resource
import shutil
import stat
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO, cast

import zstandard

from architect.runtime.checkpoint.api import FileInfo, Manifest, PayloadInfo, Scope
from architect.runtime.checkpoint.errors import (
    CheckpointError,
    ImageCorrupt,
    ImageEmpty,
    ImageMismatch,
    ImageMissing,
    ImageTruncated,
)

FORMAT_VERSION = 2  # what a chunked image is written as
# 1: whole-file digests only (written for images without chunks: older nodes read them).
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
ENGINE_DIR = "engine"
EMPTYDIR_DIR = "emptydir"
PAYLOAD_NAMES = {"none": "payload.tar", "zstd": "payload.tar.zst", "dir": "payload"}
DIR = "dir"  # the node-local layout: the payload is a directory
CHUNK = 1 << 20
# The stream layout's block (tar reads and writes, zstd's input and output): the
# pack and unpack run in a thread of the shim or the daemon, and each block
# costs a few GIL hand-offs (read, hash, compress, write); with the host's event
# loop busy each hand-off can wait its switch interval (5 ms), so few big blocks
# (a 256 MiB image packed 10x slower beside a busy thread at 128 KiB writes).
STREAM_BLOCK = 8 << 20
# zstd level 1: memory pages compress well and level 1 runs near disk speed.
ZSTD_LEVEL = 1
# Compress when a sample shrinks to this fraction or less; else it costs time for little.
COMPRESS_IF_RATIO_BELOW = 0.85
SAMPLE_BYTES = 4 << 20
# Per-chunk digests for files of two chunks or more (directory layout): 8 MiB
# pieces keep both cores busy to the end of a 64 MiB file; 256 MiB lists 32.
HASH_CHUNK = 8 << 20
MAX_HASH_THREADS = 4
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# A stream pack or extract of this many bytes or more logs where its time went.
LOG_STREAM_BYTES = 32 << 20

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- pure parts


def choose_compression(sample: bytes) -> str:
    """'zstd' if ``sample`` (bytes of the largest image file) compresses well, else 'none'."""
    if not sample:
        return "none"
    packed = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(sample)
    return "zstd" if len(packed) <= COMPRESS_IF_RATIO_BELOW * len(sample) else "none"


def manifest_to_dict(m: Manifest) -> dict[str, Any]:
    d = asdict(m)
    d["scope"] = m.scope.value
    for f in d["files"]:
        if not f["chunk_size"]:  # a whole-file digest: the format 1 entry
            del f["chunk_size"], f["chunks"]
        else:
            f["chunks"] = list(f["chunks"])
    return d


def chunk_root(chunk_size: int, chunks: Sequence[str]) -> str:
    """A chunked file's ``sha256``: the digest of its chunk size and chunk digests."""
    sha = hashlib.sha256(f"architect-chunks\0{chunk_size}\0".encode())
    for c in chunks:
        sha.update(f"{c}\n".encode())
    return sha.hexdigest()


def _file_info(f: dict[str, Any], i: int, version: int, where: str) -> FileInfo:
    path = _field(f, "path", str, where)
    size = _field(f, "size", int, where)
    sha = _field(f, "sha256", str, where)
    if "chunks" not in f and "chunk_size" not in f:
        return FileInfo(path=path, size=size, sha256=sha)
    if version < 2:
        raise ImageCorrupt(where, f"manifest: files[{i}] has chunks in a format 1 manifest")
    chunk_size = _field(f, "chunk_size", int, where)
    chunks = _field(f, "chunks", list, where)
    if chunk_size <= 0 or size < 0:
        raise ImageCorrupt(where, f"manifest: files[{i}] chunk_size must be positive")
    if not all(isinstance(c, str) and _HEX64.match(c) for c in chunks):
        raise ImageCorrupt(where, f"manifest: files[{i}] chunks must be sha256 hex digests")
    if len(chunks) != -(-size // chunk_size):
        raise ImageCorrupt(
            where, f"manifest: files[{i}] lists {len(chunks)} chunk(s) for {size} bytes"
        )
    # The listing digest covers ``sha256``; this ties the chunk list to it.
    if chunk_root(chunk_size, chunks) != sha:
        raise ImageCorrupt(where, f"manifest: files[{i}] sha256 is not that of its chunks")
    return FileInfo(path=path, size=size, sha256=sha, chunk_size=chunk_size, chunks=tuple(chunks))


def _field(d: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in d:
        raise ImageCorrupt(where, f"manifest: missing field '{key}'")
    value = d[key]
    # bool is an int in Python; a size must not be True.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ImageCorrupt(where, f"manifest: field '{key}' must be {kind.__name__}")
    return value


def manifest_from_dict(d: object, where: str) -> Manifest:
    """Validate a parsed manifest.json; ImageCorrupt names the bad field."""
    if not isinstance(d, dict):
        raise ImageCorrupt(where, "manifest: not a JSON object")
    version = _field(d, "format_version", int, where)
    if version not in READABLE_VERSIONS:
        want = " or ".join(str(v) for v in READABLE_VERSIONS)
        raise ImageCorrupt(
            where,
            f"manifest: format_version {version} (this node reads {want}; "
            "the image was written by a newer Architect)",
        )
    scope_s = _field(d, "scope", str, where)
    try:
        scope = Scope(scope_s)
    except ValueError:
        raise ImageCorrupt(where, f"manifest: scope '{scope_s}' unknown") from None
    p = _field(d, "payload", dict, where)
    compression = _field(p, "compression", str, where)
    if compression not in PAYLOAD_NAMES:
        raise ImageCorrupt(where, f"manifest: payload compression '{compression}' unknown")
    payload = PayloadInfo(
        file=_field(p, "file", str, where),
        compression=compression,
        size=_field(p, "size", int, where),
        sha256=_field(p, "sha256", str, where),
        raw_size=_field(p, "raw_size", int, where),
    )
    if payload.file != PAYLOAD_NAMES[compression]:
        raise ImageCorrupt(where, f"manifest: payload file '{payload.file}' unexpected")
    files = []
    for i, f in enumerate(_field(d, "files", list, where)):
        if not isinstance(f, dict):
            raise ImageCorrupt(where, f"manifest: files[{i}] is not an object")
        files.append(_file_info(f, i, version, where))
    empty_dirs = _field(d, "empty_dirs", list, where)
    if not all(isinstance(e, str) for e in empty_dirs):
        raise ImageCorrupt(where, "manifest: empty_dirs must be a list of strings")
    # Optional: images written before the field existed have none.
    addresses = _field(d, "addresses", list, where) if "addresses" in d else []
    if not all(isinstance(a, str) for a in addresses):
        raise ImageCorrupt(where, "manifest: addresses must be a list of strings")
    return Manifest(
        format_version=version,
        backend=_field(d, "backend", str, where),
        backend_version=_field(d, "backend_version", str, where),
        scope=scope,
        container=_field(d, "container", str, where),
        pod_template_hash=_field(d, "pod_template_hash", str, where),
        created=_field(d, "created", str, where),
        payload=payload,
        files=tuple(files),
        empty_dirs=tuple(empty_dirs),
        memory_bytes=_field(d, "memory_bytes", int, where),
        addresses=tuple(addresses),
    )


def safe_member_path(name: str, where: str) -> PurePosixPath:
    """A tar member name as a relative path that cannot leave the scratch dir."""
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ImageCorrupt(where, f"payload: unsafe member path '{name}'")
    if p.parts[0] not in (ENGINE_DIR, EMPTYDIR_DIR):
        raise ImageCorrupt(where, f"payload: unexpected member '{name}'")
    return p


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------- streams


def _run_wait_s() -> float:
    """This thread's time waiting for a CPU (run queue) so far, 0 if unknown."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


@contextlib.contextmanager
def _timed(what: str, where: Path, size: Callable[[], int]) -> Iterator[None]:
    """Log (big streams only) the wall time of the block against this thread's
    CPU time (user and system: a system share is the kernel's work for this
    thread, page faults, page cache reclaim) and run-queue wait: the rest is
    I/O or the GIL held by another thread."""
    t0, r0, w0 = time.monotonic(), resource.getrusage(resource.RUSAGE_THREAD), _run_wait_s()
    yield
    n = size()
    if n >= LOG_STREAM_BYTES:
        r1 = resource.getrusage(resource.RUSAGE_THREAD)
        wall, wait = time.monotonic() - t0, _run_wait_s() - w0
        user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
        log.info("%s %s: %.1f MiB in %.3fs (%.0f MB/s): cpu %.3fs (user %.3fs, system %.3fs, "
                 "%d page faults), run-queue wait %.3fs, other (I/O, GIL) %.3fs",
                 what, where, n / 2**20, wall, n / 1e6 / max(wall, 1e-9), user + system, user,
                 system, r1.ru_minflt - r0.ru_minflt + r1.ru_majflt - r0.ru_majflt, wait,
                 max(0.0, wall - user - system - wait))


class _HashingWriter:
    """File-like sink that hashes and counts what passes through to ``out``."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, b: bytes) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.out.write(b)

    def flush(self) -> None:
        self.out.flush()


class _HashingReader:
    """File-like source that hashes and counts what is read from ``src``."""

    def __init__(self, src: BinaryIO) -> None:
        self.src = src
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        b = self.src.read(n)
        self.sha.update(b)
        self.size += len(b)
        return b

    def readinto(self, buf: bytearray | memoryview) -> int:
        b = self.read(len(buf))
        buf[: len(b)] = b
        return len(b)


# (size, sha256, chunk digests): a file's digest as FileInfo records it.
Digest = tuple[int, str, tuple[str, ...]]


class FileDigest:
    """A file's digest fed in order: whole (chunk_size 0) or per chunk_size bytes."""

    def __init__(self, chunk_size: int = 0) -> None:
        self.chunk_size = chunk_size
        self.size = 0
        self._sha = hashlib.sha256()
        self._fill = 0
        self._chunks: list[str] = []

    def update(self, b: bytes | bytearray | memoryview) -> None:
        mv = memoryview(b)
        self.size += len(mv)
        if not self.chunk_size:
            self._sha.update(mv)
            return
        while mv:
            take = min(len(mv), self.chunk_size - self._fill)
            self._sha.update(mv[:take])
            self._fill += take
            mv = mv[take:]
            if self._fill == self.chunk_size:
                self._chunks.append(self._sha.hexdigest())
                self._sha, self._fill = hashlib.sha256(), 0

    def result(self) -> Digest:
        if not self.chunk_size:
            return self.size, self._sha.hexdigest(), ()
        chunks = self._chunks + ([self._sha.hexdigest()] if self._fill else [])
        return self.size, chunk_root(self.chunk_size, chunks), tuple(chunks)


def _stream(
    src: IO[bytes] | BinaryIO, out: IO[bytes] | BinaryIO | None, chunk_size: int = 0
) -> Digest:
    """Copy ``src`` to ``out`` (if given) in CHUNKs; its digest."""
    digest = FileDigest(chunk_size)
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        if out is not None:
            out.write(chunk)
    return digest.result()


def chunk_size_for(size: int) -> int:
    """The chunk size a file of ``size`` bytes is hashed with in the directory layout."""
    return HASH_CHUNK if size >= 2 * HASH_CHUNK else 0


def _hash_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_HASH_THREADS))


_local = threading.local()


def _buffer() -> memoryview:
    """This thread's read buffer: an image has dozens of small files, and a fresh
    MiB for each costs more than hashing it."""
    buf: memoryview | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = memoryview(bytearray(CHUNK))
    return buf


def _hash_piece(path: Path, offset: int, length: int | None) -> tuple[int, str]:
    """Bytes read and sha256 of ``length`` bytes at ``offset`` (None: to the end)."""
    sha = hashlib.sha256()
    buf = _buffer()
    done = 0
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        while length is None or done < length:
            want = CHUNK if length is None else min(CHUNK, length - done)
            n = os.preadv(fd, [buf[:want]], offset + done)
            if n == 0:
                break
            sha.update(buf[:n])  # releases the GIL: the other pieces hash meanwhile
            done += n
    finally:
        os.close(fd)
    return done, sha.hexdigest()


def hash_files(jobs: Sequence[tuple[Path, int]]) -> list[Digest]:
    """The digest of each (file, chunk_size) on all cores: a chunked file's chunks
    and the other files are hashed side by side. A file that ends early or grows
    past its size at the start shows as a size that is not the one recorded."""
    pieces: list[tuple[int, Path, int, int | None]] = []  # job, path, offset, length
    sizes: list[int] = []
    for j, (path, chunk_size) in enumerate(jobs):
        if chunk_size <= 0:
            pieces.append((j, path, 0, None))
            sizes.append(-1)
            continue
        size = path.stat().st_size
        sizes.append(size)
        pieces += [
            (j, path, off, min(chunk_size, size - off)) for off in range(0, size, chunk_size)
        ]
        # one byte past the end: a file longer than its stat said does not pass
        pieces.append((j, path, size, 1))
    # Chunks go to the pool; small whole files are hashed here meanwhile (handing
    # each to a thread costs more than hashing it).
    big = [i for i, (_, _, _, n) in enumerate(pieces) if n is not None and n > CHUNK]
    threads = min(_hash_threads(), len(big))
    done: list[tuple[int, str]] = [(0, "")] * len(pieces)
    with contextlib.ExitStack() as stack:
        futures = {}
        if threads > 1:
            pool = stack.enter_context(ThreadPoolExecutor(threads, thread_name_prefix="image-hash"))
            futures = {i: pool.submit(_hash_piece, *pieces[i][1:]) for i in big}
        for i, (_, path, off, n) in enumerate(pieces):
            if i not in futures:
                done[i] = _hash_piece(path, off, n)
        for i, f in futures.items():
            done[i] = f.result()
    out: list[Digest] = []
    k = 0
    for j, (_, chunk_size) in enumerate(jobs):
        if chunk_size <= 0:
            n, digest = done[k]
            out.append((n, digest, ()))
            k += 1
            continue
        count = -(-sizes[j] // chunk_size)
        mine = done[k : k + count]
        extra = done[k + count][0]
        k += count + 1
        size = sum(n for n, _ in mine) + extra
        chunks = tuple(d for _, d in mine)
        out.append((size, chunk_root(chunk_size, chunks), chunks))
    return out


def _walk(root: Path) -> Iterator[Path]:
    """Every entry under ``root``, parents first, sorted for stable images."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames):
            yield base / name
        for name in sorted(filenames):
            yield base / name


# ---------------------------------------------------------------- pack


def pack(
    image_dir: Path,
    engine_dir: Path,
    empty_dirs: Iterable[Path],
    *,
    backend: str,
    backend_version: str,
    scope: Scope,
    container: str,
    pod_template_hash: str,
    memory_bytes: int,
    compression: str = "auto",
    addresses: Iterable[str] = (),
) -> Manifest:
    """Write ``engine_dir`` and the emptyDir trees as an image in ``image_dir``."""
    empty_dirs = tuple(empty_dirs)
    if compression == "auto":
        compression = choose_compression(_sample(engine_dir))
    if compression not in PAYLOAD_NAMES:
        raise CheckpointError(
            image_dir, f"compression '{compression}' unknown (none, zstd, dir, auto)"
        )
    image_dir.mkdir(parents=True, exist_ok=True)
    payload_path = image_dir / PAYLOAD_NAMES[compression]
    if compression == DIR:
        listed, size, digest = _pack_dir(payload_path, engine_dir, empty_dirs)
        return _write_manifest(
            image_dir, backend, backend_version, scope, container, pod_template_hash,
            PayloadInfo(payload_path.name, DIR, size, digest, size), listed, empty_dirs,
            memory_bytes, addresses,
        )  # fmt: skip
    files: list[FileInfo] = []
    raws: list[_HashingWriter] = []  # the tar stream's size, for the log
    with _timed("packed", payload_path, lambda: raws[0].size), \
            open(payload_path, "wb") as out:
        sink = _HashingWriter(out)
        with contextlib.ExitStack() as stack:
            stream: Any = sink
            if compression == "zstd":
                stream = stack.enter_context(
                    zstandard.ZstdCompressor(level=ZSTD_LEVEL).stream_writer(
                        cast(IO[bytes], sink), closefd=False, write_size=STREAM_BLOCK
                    )
                )
            raw = _HashingWriter(stream)
            raws.append(raw)
            # 1 MiB blocks: tarfile's default 10-16 KiB steps make packing CPU-bound.
            with tarfile.open(
                fileobj=cast(IO[bytes], raw), mode="w|", format=tarfile.PAX_FORMAT,
                bufsize=STREAM_BLOCK,
            ) as tar:
                tar.copybufsize = STREAM_BLOCK  # type: ignore[attr-defined]  # not in typeshed
                trees = [(ENGINE_DIR, engine_dir)]
                trees += [(f"{EMPTYDIR_DIR}/{i}", p) for i, p in enumerate(empty_dirs)]
                for prefix, root in trees:
                    if not root.is_dir():
                        raise CheckpointError(root, "not a directory")
                    tar.add(root, arcname=prefix, recursive=False)
                    for path in _walk(root):
                        arc = f"{prefix}/{path.relative_to(root).as_posix()}"
                        info = _add(tar, path, arc)
                        if info is not None:
                            files.append(info)
        out.flush()
        os.fsync(out.fileno())
    payload = PayloadInfo(
        file=payload_path.name,
        compression=compression,
        size=sink.size,
        sha256=sink.sha.hexdigest(),
        raw_size=raw.size,
    )
    return _write_manifest(
        image_dir, backend, backend_version, scope, container, pod_template_hash,
        payload, files, empty_dirs, memory_bytes, addresses,
    )  # fmt: skip


def _write_manifest(
    image_dir: Path,
    backend: str,
    backend_version: str,
    scope: Scope,
    container: str,
    pod_template_hash: str,
    payload: PayloadInfo,
    files: Iterable[FileInfo],
    empty_dirs: Iterable[Path],
    memory_bytes: int,
    addresses: Iterable[str],
) -> Manifest:
    files = tuple(files)
    manifest = Manifest(
        # Format 1 when nothing is chunked (every stream): a node running older
        # code reads it; a chunked one it refuses by the version, not by a digest.
        format_version=FORMAT_VERSION if any(f.chunks for f in files) else 1,
        backend=backend,
        backend_version=backend_version,
        scope=scope,
        container=container,
        pod_template_hash=pod_template_hash,
        created=now_rfc3339(),
        payload=payload,
        files=files,
        empty_dirs=tuple(str(p) for p in empty_dirs),
        memory_bytes=memory_bytes,
        addresses=tuple(addresses),
    )
    tmp = image_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest_to_dict(manifest), indent=2) + "\n")
    # The manifest lands last and atomically: an image without one is unfinished.
    tmp.rename(image_dir / MANIFEST)
    return manifest


def _pack_dir(
    payload: Path, engine_dir: Path, empty_dirs: tuple[Path, ...]
) -> tuple[list[FileInfo], int, str]:
    """The directory layout: the trees as they are, every regular file hashed once
    (in the image, all files on all cores; big ones per chunk).

    The engine's files are hard-linked when they can be (the dump's scratch copy
    is removed right after), the emptyDirs copied (they stay the pod's)."""
    payload.mkdir()
    trees = [(ENGINE_DIR, engine_dir, True)]
    trees += [(f"{EMPTYDIR_DIR}/{i}", p, False) for i, p in enumerate(empty_dirs)]
    placed: list[tuple[str, Path, int]] = []  # arc, file in the image, chunk size
    for prefix, root, link in trees:
        if not root.is_dir():
            raise CheckpointError(root, "not a directory")
        dest = payload / prefix
        dest.mkdir(parents=True)
        for path in _walk(root):
            rel = path.relative_to(root)
            size = _place(path, dest / rel, link)
            if size is not None:
                placed.append((f"{prefix}/{rel.as_posix()}", dest / rel, chunk_size_for(size)))
    digests = hash_files([(dst, cs) for _, dst, cs in placed])
    files = [
        FileInfo(path=arc, size=size, sha256=digest, chunk_size=cs, chunks=chunks)
        for (arc, _, cs), (size, digest, chunks) in zip(placed, digests, strict=True)
    ]
    # No fsync: this layout is for images that live and die with the node's pods.
    return files, sum(f.size for f in files), _listing_digest(files)


def _place(src: Path, dst: Path, link: bool) -> int | None:
    """Put ``src`` at ``dst`` (hard link or copy); a regular file's size, else None."""
    st = src.lstat()
    if stat.S_ISSOCK(st.st_mode):
        return None  # as in the stream layout: sockets cannot be kept
    if not stat.S_ISREG(st.st_mode):
        if stat.S_ISDIR(st.st_mode):
            dst.mkdir()
            shutil.copystat(src, dst)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(dst, stat.S_IMODE(st.st_mode))
        else:
            raise CheckpointError(src, "unsupported file type for an image")
        with contextlib.suppress(OSError):
            os.lchown(dst, st.st_uid, st.st_gid)
        return None
    if link:
        try:
            os.link(src, dst)
            return st.st_size
        except OSError:
            pass
    with open(src, "rb") as f, open(dst, "xb") as out:
        shutil.copyfileobj(f, out, CHUNK)
    shutil.copystat(src, dst)
    with contextlib.suppress(OSError):
        os.lchown(dst, st.st_uid, st.st_gid)
    return dst.lstat().st_size


def _listing_digest(files: Iterable[FileInfo]) -> str:
    """The directory layout's payload digest: that of its file list."""
    sha = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.path):
        sha.update(f"{f.path}\0{f.size}\0{f.sha256}\n".encode())
    return sha.hexdigest()


def _sample(root: Path) -> bytes:
    biggest: tuple[int, Path] | None = None
    for path in _walk(root):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and (biggest is None or st.st_size > biggest[0]):
            biggest = (st.st_size, path)
    if biggest is None:
        return b""
    with open(biggest[1], "rb") as f:
        return f.read(SAMPLE_BYTES)


def _add(tar: tarfile.TarFile, path: Path, arc: str) -> FileInfo | None:
    """Add one entry; hash regular files. Sockets cannot be archived and are skipped."""
    st = path.lstat()
    if stat.S_ISSOCK(st.st_mode):
        return None
    ti = tar.gettarinfo(str(path), arcname=arc)
    if not ti.isfile():
        tar.addfile(ti)
        return None
    with open(path, "rb") as f:
        reader = _HashingReader(cast(BinaryIO, f))
        tar.addfile(ti, fileobj=cast(IO[bytes], reader))
    return FileInfo(path=arc, size=reader.size, sha256=reader.sha.hexdigest())


# ---------------------------------------------------------------- read / unpack


def read_manifest(image_dir: Path) -> Manifest:
    """The image's manifest, with the payload's presence and size checked."""
    where = str(image_dir)
    if not image_dir.is_dir():
        raise ImageMissing(where, "checkpoint image directory does not exist")
    mpath = image_dir / MANIFEST
    if not mpath.is_file():
        raise ImageMissing(where, f"no {MANIFEST} (image missing or unfinished)")
    text = mpath.read_bytes()
    if not text.strip():
        raise ImageEmpty(where, f"{MANIFEST} is empty")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ImageCorrupt(where, f"{MANIFEST} is not valid JSON ({e})") from None
    m = manifest_from_dict(data, where)
    ppath = image_dir / m.payload.file
    if m.payload.compression == DIR:
        if not ppath.is_dir() or ppath.is_symlink():
            raise ImageMissing(where, f"payload directory {m.payload.file} missing")
        if _listing_digest(m.files) != m.payload.sha256:
            raise ImageCorrupt(where, "payload sha256 does not match the manifest's file list")
        return m  # file sizes and digests: checked by verify / unpack
    if not ppath.is_file():
        raise ImageMissing(where, f"payload {m.payload.file} missing")
    size = ppath.stat().st_size
    if size == 0:
        raise ImageEmpty(where, f"payload {m.payload.file} is empty")
    if size < m.payload.size:
        raise ImageTruncated(
            where, f"payload {m.payload.file} has {size} bytes, manifest says {m.payload.size}"
        )
    if size > m.payload.size:
        raise ImageCorrupt(
            where, f"payload {m.payload.file} has {size} bytes, manifest says {m.payload.size}"
        )
    return m


def unpack(image_dir: Path, dest: Path) -> Manifest:
    """Verify and extract the image into the new directory ``dest``.

    Returns the manifest; ``dest/engine`` holds the engine's files and
    ``dest/emptydir/<n>`` the emptyDir trees. On any error ``dest`` is removed.
    """
    m = read_manifest(image_dir)
    where = str(image_dir)
    dest.mkdir(parents=True)
    try:
        if m.payload.compression == DIR:
            _check_dir(image_dir / m.payload.file, dest, m, where)
        else:
            _extract(image_dir / m.payload.file, dest, m, where)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)  # only we wrote there: no mounts
        raise
    return m


def verify(image_dir: Path) -> Manifest:
    """Check every digest of the image without extracting it (reads it once)."""
    m = read_manifest(image_dir)
    if m.payload.compression == DIR:
        _check_dir(image_dir / m.payload.file, None, m, str(image_dir))
    else:
        _extract(image_dir / m.payload.file, None, m, str(image_dir))
    return m


# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns): ctime cannot be set from
# user space, and every change of content or name through the filesystem moves it.
Fingerprint = tuple[int, int, int, int, int]


def fingerprint(st: os.stat_result) -> Fingerprint:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class Seal:
    """How a directory-layout image's files looked once their digests were taken.

    Taken by the process that wrote and hashed the image (``seal``), kept in that
    process's memory only: nothing on disk vouches for an image, and a restarted
    process hashes every file again."""

    manifest: Fingerprint
    files: dict[str, Fingerprint] = field(default_factory=dict)


@dataclass(frozen=True)
class InPlace:
    """What ``verify_in_place`` did: the engine's directory inside the image, and
    how many files (bytes) it hashed and how many the seal vouched for."""

    manifest: Manifest
    engine_dir: Path
    hashed_files: int
    hashed_bytes: int
    trusted_files: int


def seal(image_dir: Path, m: Manifest) -> Seal | None:
    """A ``Seal`` of the directory-layout image ``image_dir`` (None for a stream).

    Call it right after ``pack`` (once whatever else linked to its files is
    gone: an unlink moves the ctime of the other links too), in the process that
    hashed them; a file that changed since the hashing is not vouched for."""
    if m.payload.compression != DIR:
        return None
    payload = image_dir / m.payload.file
    files: dict[str, Fingerprint] = {}
    for f in m.files:
        st = (payload / f.path).lstat()
        if stat.S_ISREG(st.st_mode) and st.st_size == f.size:
            files[f.path] = fingerprint(st)
    return Seal(fingerprint((image_dir / MANIFEST).lstat()), files)


def verify_in_place(image_dir: Path, sealed: Seal | None = None) -> InPlace:
    """Verify a directory-layout image without copying it (ImageCorrupt, ... as
    ``verify``); files ``sealed`` vouches for are not hashed again (all of them
    are when the manifest itself is not the sealed one)."""
    m = read_manifest(image_dir)
    where = str(image_dir)
    if m.payload.compression != DIR:
        raise ImageMismatch(where, f"payload '{m.payload.file}' is a stream, not a directory")
    trusted: dict[str, Fingerprint] = {}
    if sealed is not None and fingerprint((image_dir / MANIFEST).lstat()) == sealed.manifest:
        trusted = sealed.files
    payload = image_dir / m.payload.file
    counts = _check_dir(payload, None, m, where, trusted)
    return InPlace(m, payload / ENGINE_DIR, *counts)


def bad_chunk(got: Sequence[str], want: Sequence[str]) -> str:
    """`` in chunk N`` naming the first chunk digest that differs ("" when the
    file is not chunked or the lists agree): where a change in a large file is."""
    bad = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    return "" if bad is None else f" in chunk {bad}"


def _check_dir(
    payload: Path,
    dest: Path | None,
    m: Manifest,
    where: str,
    trusted: dict[str, Fingerprint] | None = None,
) -> tuple[int, int, int]:
    """The directory layout: every entry expected, every file's digest right
    (copied into ``dest`` in the same pass when given: the engine and the
    address rewrite work on a copy, so a failed restore leaves the image whole).
    A file whose stat is its ``trusted`` fingerprint is not hashed. Returns the
    files and bytes hashed and the files trusted."""
    expected = {f.path: f for f in m.files}
    seen: set[str] = set()
    vouched = 0
    # Hashed all at once after the walk (on all cores): the file in the image, or
    # with ``dest`` its copy (what the engine will read), the source's stat kept.
    to_hash: list[tuple[FileInfo, Path, Path | None]] = []
    for top in sorted(p.name for p in payload.iterdir()):
        if top not in (ENGINE_DIR, EMPTYDIR_DIR):
            raise ImageCorrupt(where, f"payload: unexpected entry '{top}'")
    for path in _walk(payload):
        arc = path.relative_to(payload).as_posix()
        st = path.lstat()
        target = None if dest is None else dest / arc
        if stat.S_ISREG(st.st_mode):
            info = expected.get(arc)
            if info is None:
                raise ImageCorrupt(where, f"payload file '{arc}' not in the manifest")
            seen.add(arc)
            if target is None and trusted and trusted.get(arc) == fingerprint(st):
                vouched += 1
                continue
            if st.st_size != info.size:  # no need to hash it to know
                raise ImageCorrupt(where, f"payload file '{arc}' does not match its digest")
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "rb") as f, open(target, "xb") as out:
                    shutil.copyfileobj(f, out, CHUNK)
            to_hash.append((info, path, target))
        elif stat.S_ISDIR(st.st_mode):
            if target is not None:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copystat(path, target)
        elif stat.S_ISLNK(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            if target is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy(path, target)
        else:
            raise ImageCorrupt(where, f"payload entry '{arc}' has an unsupported type")
    missing = sorted(set(expected) - seen)
    if missing:
        raise ImageCorrupt(where, f"payload lacks {len(missing)} file(s), first: {missing[0]}")
    digests = hash_files([(dst or src, info.chunk_size) for info, src, dst in to_hash])
    for (info, src, dst), got in zip(to_hash, digests, strict=True):
        if got != (info.size, info.sha256, info.chunks):
            raise ImageCorrupt(where, f"payload file '{info.path}' does not match its digest"
                                      f"{bad_chunk(got[2], info.chunks)}")
        if dst is not None:
            shutil.copystat(src, dst)
    return len(to_hash), sum(info.size for info, _, _ in to_hash), vouched


def _extract(payload: Path, dest: Path | None, m: Manifest, where: str) -> None:
    expected = {f.path: f for f in m.files}
    seen: set[str] = set()
    what = "verified" if dest is None else "unpacked"
    with _timed(what, payload, lambda: m.payload.size), open(payload, "rb") as f:
        src = _HashingReader(cast(BinaryIO, f))
        with contextlib.ExitStack() as stack:
            stream: Any = src
            if m.payload.compression == "zstd":
                stream = stack.enter_context(
                    zstandard.ZstdDecompressor().stream_reader(
                        cast(IO[bytes], src), read_across_frames=True, closefd=False,
                        read_size=STREAM_BLOCK,
                    )
                )
            try:
                with tarfile.open(
                    fileobj=cast(IO[bytes], stream), mode="r|", bufsize=STREAM_BLOCK
                ) as tar:
                    for ti in tar:
                        _extract_member(tar, ti, dest, expected, seen, where)
            except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as e:
                if isinstance(e, OSError) and not isinstance(e, EOFError) and e.errno:
                    raise  # a real I/O error of this node, not a bad image
                raise ImageCorrupt(where, f"payload is not a valid archive ({e})") from None
        while src.read(CHUNK):  # tar end padding and zstd trailer count toward the digest
            pass
    if src.sha.hexdigest() != m.payload.sha256:
        raise ImageCorrupt(where, "payload sha256 does not match the manifest")
    missing = sorted(set(expected) - seen)
    if missing:
        raise ImageCorrupt(where, f"payload lacks {len(missing)} file(s), first: {missing[0]}")


def _extract_member(
    tar: tarfile.TarFile,
    ti: tarfile.TarInfo,
    dest: Path | None,
    expected: dict[str, FileInfo],
    seen: set[str],
    where: str,
) -> None:
    rel = safe_member_path(ti.name, where)
    if dest is None:  # verify only
        if ti.isfile():
            _check_file(tar, ti, None, expected, where)
            seen.add(ti.name)
        elif not (ti.isdir() or ti.issym() or ti.isfifo()):
            raise ImageCorrupt(where, f"payload member '{ti.name}' has an unsupported type")
        return
    target = dest.joinpath(*rel.parts)
    # A symlink member must not let a later member write outside ``dest``.
    root = os.path.realpath(dest)
    parent = os.path.realpath(target.parent)
    if (parent != root and not parent.startswith(root + os.sep)) or target.is_symlink():
        raise ImageCorrupt(where, f"payload member '{ti.name}' would write through a symlink")
    if ti.isdir():
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, ti.mode & 0o7777)
    elif ti.issym():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(ti.linkname, target)
    elif ti.isfile():
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "xb") as out:
            _check_file(tar, ti, out, expected, where)
        os.chmod(target, ti.mode & 0o7777)
        seen.add(ti.name)
    elif ti.isfifo():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(target, ti.mode & 0o7777)
    else:
        raise ImageCorrupt(where, f"payload member '{ti.name}' has an unsupported type")
    with contextlib.suppress(OSError):
        os.lchown(target, ti.uid, ti.gid)
    if not ti.issym():
        os.utime(target, (ti.mtime, ti.mtime))


def _check_file(
    tar: tarfile.TarFile,
    ti: tarfile.TarInfo,
    out: BinaryIO | None,
    expected: dict[str, FileInfo],
    where: str,
) -> None:
    """Stream one regular member (into ``out`` if given) and check its digest."""
    info = expected.get(ti.name)
    if info is None:
        raise ImageCorrupt(where, f"payload member '{ti.name}' not in the manifest")
    fobj = tar.extractfile(ti)
    if fobj is None:
        raise ImageCorrupt(where, f"payload member '{ti.name}' unreadable")
    if _stream(fobj, out, info.chunk_size) != (info.size, info.sha256, info.chunks):
        raise ImageCorrupt(where, f"payload member '{ti.name}' does not match its digest")


def put_back_empty_dirs(
    unpacked: Path, m: Manifest, targets: tuple[Path, ...] | None = None
) -> None:
    """Put each emptyDir's saved content into its target.

    ``targets``: where the n-th emptyDir goes (a replacement pod has new paths);
    None: back where it was taken from. An entry of the image replaces the
    target's entry of the same name; the target's other entries stay (another
    container of the pod, an init container say, may have written them: nothing
    a user wrote is deleted)."""
    paths = targets if targets is not None else tuple(Path(p) for p in m.empty_dirs)
    if len(paths) != len(m.empty_dirs):
        raise ImageMismatch(
            str(unpacked),
            f"image holds {len(m.empty_dirs)} emptyDir(s), the container has {len(paths)}",
        )
    for i, target in enumerate(paths):
        src = unpacked / EMPTYDIR_DIR / str(i)
        target.mkdir(parents=True, exist_ok=True)
        if not src.is_dir():
            continue
        for child in list(src.iterdir()):
            dst = target / child.name
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            elif dst.exists() or dst.is_symlink():
                dst.unlink()
            _move(child, dst)


def _scratch(beside: Path, what: str) -> Path:
    """A fresh hidden directory path next to ``beside`` (same filesystem), not made."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    return beside.parent / f".{beside.name}.{what}-{uuid.uuid4().hex[:8]}"


def place_empty_dirs(image_dir: Path, targets: tuple[Path, ...]) -> Manifest:
    """Verify the image and put its emptyDir content into ``targets`` (the n-th
    saved volume into the n-th path), without restoring anything: a replacement
    that stays hibernated gets its volumes at create, like one that restores."""
    scratch = _scratch(image_dir, "emptydirs")
    try:
        m = unpack(image_dir, scratch)
        put_back_empty_dirs(scratch, m, targets)
        return m
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # only we wrote there: no mounts


def repack(
    image_dir: Path, dest: Path, empty_dirs: Iterable[Path], compression: str = "auto"
) -> Manifest:
    """The image at ``image_dir`` as a new image in ``dest``, its emptyDir trees
    replaced by the content of ``empty_dirs`` now (none: the new image holds none).
    A hibernation image carries no emptyDir; a migration that should move them
    repacks it with the volumes as they are at the pod's stop."""
    scratch = _scratch(image_dir, "repack")
    try:
        m = unpack(image_dir, scratch)
        return pack(
            dest, scratch / ENGINE_DIR, empty_dirs,
            backend=m.backend, backend_version=m.backend_version, scope=m.scope,
            container=m.container, pod_template_hash=m.pod_template_hash,
            memory_bytes=m.memory_bytes, compression=compression, addresses=m.addresses,
        )  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _move(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; across mounts (kubelet's pod dirs often sit on
    another one than the image) copy the tree, FIFOs and symlinks as such."""
    try:
        os.replace(src, dst)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    _copy(src, dst)
    if src.is_dir() and not src.is_symlink():
        shutil.rmtree(src)
    else:
        src.unlink()


def _copy(src: Path, dst: Path) -> None:
    st = src.lstat()
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISDIR(st.st_mode):
        dst.mkdir()
        for child in src.iterdir():
            _copy(child, dst / child.name)
        shutil.copystat(src, dst)
    elif stat.S_ISFIFO(st.st_mode):
        os.mkfifo(dst, stat.S_IMODE(st.st_mode))  # copying would block on open
    else:
        shutil.copy2(src, dst)
    with contextlib.suppress(OSError):
        os.lchown(dst, st.st_uid, st.st_gid)
