"""Task events published to containerd through its publish binary.

``<publish-binary> --address <containerd grpc> publish --topic T --namespace NS``
reads a serialized ``google.protobuf.Any`` on stdin (containerd's
cmd/containerd/command/publish.go). Events go out one at a time, in order: an exit
must never overtake the start it follows.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from google.protobuf import any_pb2
from google.protobuf.message import Message

from architect.runtime.shim.pb import events_pb2
from architect.runtime.shim.reaper import Reaper

log = logging.getLogger(__name__)

TOPICS: dict[type[Message], str] = {
    events_pb2.TaskCreate: "/tasks/create",
    events_pb2.TaskStart: "/tasks/start",
    events_pb2.TaskDelete: "/tasks/delete",
    events_pb2.TaskExit: "/tasks/exit",
    events_pb2.TaskOOM: "/tasks/oom",
    events_pb2.TaskExecAdded: "/tasks/exec-added",
    events_pb2.TaskExecStarted: "/tasks/exec-started",
    events_pb2.TaskPaused: "/tasks/paused",
    events_pb2.TaskResumed: "/tasks/resumed",
    events_pb2.TaskCheckpointed: "/tasks/checkpointed",
}


def encode_event(event: Message) -> tuple[str, bytes]:
    """(topic, serialized Any) for an event; containerd's typeurl is the full name."""
    topic = TOPICS[type(event)]
    wrapped = any_pb2.Any(
        type_url=event.DESCRIPTOR.full_name, value=event.SerializeToString()
    )
    return topic, wrapped.SerializeToString()


@dataclass
class PublishTarget:
    binary: str
    address: str
    namespace: str


class Publisher:
    def __init__(self, reaper: Reaper, target: PublishTarget) -> None:
        self._reaper = reaper
        self._target = target
        self._queue: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.sent: list[str] = []  # topics, for status and tests

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def publish(self, event: Message) -> None:
        self._queue.put_nowait(event)

    async def drain(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self._queue.join(), timeout)

    async def _run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._send(event)
            except Exception as e:
                log.error("publishing %s failed: %s", type(event).__name__, e)
            finally:
                self._queue.task_done()

    async def _send(self, event: Message) -> None:
        import tempfile

        topic, data = encode_event(event)
        t = self._target
        argv = [t.binary, "--address", t.address, "publish", "--topic", topic,
                "--namespace", t.namespace]
        for attempt in range(3):  # containerd may be briefly busy; bounded
            with tempfile.TemporaryFile() as stdin, tempfile.TemporaryFile() as err:
                stdin.write(data)
                stdin.seek(0)
                _, done = self._reaper.spawn(argv, stdin=stdin, stderr=err)
                code = await asyncio.wait_for(done, 30)
                if code == 0:
                    self.sent.append(topic)
                    return
                err.seek(0)
                msg = err.read().decode(errors="replace").strip()
            log.warning("publish %s attempt %d failed (%d): %s", topic, attempt + 1, code, msg)
            await asyncio.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"could not publish {topic}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
