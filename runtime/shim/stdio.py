"""Container stdio: pipes between runc and containerd's FIFOs, or a console (TTY).

The container gets plain pipes, never the FIFOs: CRIU re-attaches pipes on restore
(runc passes them as inherited fds) but cannot re-open a host FIFO. The shim keeps
its own copy of the pipes' write ends while the container lives, so a checkpoint,
which kills every process, is no EOF for containerd: the same pipes are handed to
``runc restore`` and output goes on into the same FIFOs.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import socket
import struct
import termios
from pathlib import Path

from architect.runtime.shim.runc import Stdio

log = logging.getLogger(__name__)
_CHUNK = 32 * 1024


def _open_fifo(path: str, flags: int) -> int:
    # O_RDWR never blocks on open and never sees EOF from a vanished writer.
    return os.open(path, flags | os.O_CLOEXEC)


class Copier:
    """Copies bytes from one fd to another on the event loop, until EOF."""

    def __init__(self, src: int, dst: int, name: str, on_eof: asyncio.Future[None]) -> None:
        self.src, self.dst, self.name = src, dst, name
        self.done = on_eof
        os.set_blocking(src, False)
        asyncio.get_running_loop().add_reader(src, self._ready)

    def _ready(self) -> None:
        try:
            data = os.read(self.src, _CHUNK)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.EIO:  # a pty master whose slave side is closed
                data = b""
            else:
                log.warning("%s: read failed: %s", self.name, e)
                data = b""
        if not data:
            self.stop()
            return
        try:
            _write_all(self.dst, data)
        except OSError as e:
            log.warning("%s: write failed: %s", self.name, e)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.src)
        if not self.done.done():
            self.done.set_result(None)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            # The reader (containerd) is slow: wait for room rather than drop output.
            import select

            select.select([], [fd], [], 1.0)
            continue
        view = view[n:]


class PipeIO:
    """Stdio of one process through pipes, copied to/from containerd's FIFOs."""

    def __init__(self, stdin: str, stdout: str, stderr: str) -> None:
        self.paths = (stdin, stdout, stderr)
        self._fds: list[int] = []
        self._copiers: list[Copier] = []
        self._eofs: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        # stdin pipe: container reads [0], shim writes [1]
        self.in_r, self.in_w = os.pipe2(os.O_CLOEXEC)
        self.out_r, self.out_w = os.pipe2(os.O_CLOEXEC)
        self.err_r, self.err_w = os.pipe2(os.O_CLOEXEC)
        self._stdin_fifo = -1
        if stdin:
            self._stdin_fifo = _open_fifo(stdin, os.O_RDWR)
            eof = loop.create_future()
            self._copiers.append(Copier(self._stdin_fifo, self.in_w, "stdin", eof))
        else:
            os.close(self.in_w)
            self.in_w = -1
        self._out_fifos: list[int] = []
        for path, rfd, name in ((stdout, self.out_r, "stdout"), (stderr, self.err_r, "stderr")):
            eof = loop.create_future()
            self._eofs.append(eof)
            if path:
                dst = _open_fifo(path, os.O_RDWR)
                self._out_fifos.append(dst)
            else:
                dst = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                self._out_fifos.append(dst)
            self._copiers.append(Copier(rfd, dst, name, eof))

    def stdio(self) -> Stdio:
        """The container's side (runc inherits these as fds 0, 1, 2)."""
        return Stdio(self.in_r, self.out_w, self.err_w)

    def close_stdin(self) -> None:
        if self.in_w >= 0:
            for c in self._copiers:
                if c.dst == self.in_w:
                    c.stop()
            os.close(self.in_w)
            self.in_w = -1

    async def finish(self, timeout: float = 5.0) -> None:
        """The process exited for good: drop the shim's write ends, drain, close."""
        for fd in (self.out_w, self.err_w, self.in_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.out_w = self.err_w = self.in_r = -1
        # Processes the container forked may still hold the pipes: bounded wait.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._eofs), timeout)
        self.close()

    def close(self) -> None:
        for c in self._copiers:
            c.stop()
        for fd in (self.in_r, self.in_w, self.out_r, self.out_w, self.err_r, self.err_w,
                   self._stdin_fifo, *self._out_fifos):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.in_r = self.in_w = self.out_r = self.out_w = self.err_r = self.err_w = -1
        self._stdin_fifo = -1
        self._out_fifos = []


class ConsoleIO:
    """A TTY: runc sends the pty master over a console socket; copy it to the FIFOs."""

    def __init__(self, sock_path: Path, stdin: str, stdout: str) -> None:
        self.sock_path = sock_path
        self.paths = (stdin, stdout)
        self.master = -1
        self._copiers: list[Copier] = []
        self._eof: asyncio.Future[None] | None = None
        self._fds: list[int] = []
        sock_path.unlink(missing_ok=True)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(sock_path))
        self._listener.listen(1)
        self._listener.setblocking(False)

    async def receive(self, timeout: float = 30.0) -> None:
        """Accept runc's connection and take the pty master it sends."""
        loop = asyncio.get_running_loop()
        conn, _ = await asyncio.wait_for(loop.sock_accept(self._listener), timeout)
        with conn:
            conn.setblocking(True)
            conn.settimeout(timeout)
            _, fds, _, _ = socket.recv_fds(conn, 4096, 1)
        if not fds:
            raise OSError("runc sent no console fd")
        self.master = fds[0]
        self._listener.close()
        self.sock_path.unlink(missing_ok=True)
        stdin, stdout = self.paths
        self._eof = loop.create_future()
        if stdout:
            out = _open_fifo(stdout, os.O_RDWR)
            self._fds.append(out)
            self._copiers.append(Copier(self.master, out, "console", self._eof))
        if stdin:
            fin = _open_fifo(stdin, os.O_RDWR)
            self._fds.append(fin)
            self._copiers.append(Copier(fin, self.master, "console-in", loop.create_future()))

    def resize(self, width: int, height: int) -> None:
        if self.master >= 0:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    async def finish(self, timeout: float = 5.0) -> None:
        if self._eof is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._eof), timeout)
        self.close()

    def close_stdin(self) -> None:
        # A TTY has one channel; an EOF character is what closing stdin means.
        if self.master >= 0:
            with contextlib.suppress(OSError):
                os.write(self.master, b"\x04")

    def close(self) -> None:
        for c in self._copiers:
            c.stop()
        with contextlib.suppress(OSError):
            self._listener.close()
        for fd in (self.master, *self._fds):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.master = -1
        self._fds = []
