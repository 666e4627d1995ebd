"""The destination node's side of a transfer: grant Secrets labelled for this node.

For each new grant: mark the handover pending at once (the replacement's
Create waits for it), fetch and verify the image from the source daemon
(runtime/transfer), then report on the Checkpoint named in the ticket:

- fetch failed: ``failed_patch`` (retry for a network error or a source that is
  down; Failed for an image that does not verify);
- fetched: once the shim took the image (the handover directory is gone) and
  the replacement's start record, when this node runs it, says restore:
  ``consumed_patch``; a fresh start: Failed, and the fetched copy removed. A
  ticket that expires first hands the checkpoint back.

One replacement restores one image. The grants for one pod (the control plane
claimed two Checkpoints for it, its snapshot behind its own claim) share its
slot, so they run one at a time: a later one waits for the earlier one's outcome
and, once the pod took that image (or started), is handed back (Ready) for
another replacement without fetching. A pod that took a local handover instead
(``[from_*]`` in its start reason) hands the grant back too, and its fetched
copy goes. (A daemon restarted between the fetch and the start cannot tell which
grant's image a slot holds: the first it sees takes it.)
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from architect.engine.controlplane.coordinate import consumed_patch, failed_patch
from architect.engine.controlplane.transfer import Grant, TransferError, grant_from_data
from architect.runtime.daemon.checkpointobjects import (
    Outcome,
    taken_handover,
    transfer_retryable,
    what_was_taken,
)
from architect.runtime.shim.plan import destination_slot

log = logging.getLogger("architect.daemon.grants")

# (namespace, name, JSON patch) -> the object, or None when a test op failed.
PatchFn = Callable[[str, str, list[dict[str, Any]]], Awaitable[Any]]
# The blocking fetch: (grant) -> handover directory. Raises TransferError.
FetchFn = Callable[[Grant], Awaitable[Path]]
# (namespace, pod, container) -> the replacement's start outcome on this node, if known.
StartFn = Callable[[str, str, str], tuple[Outcome, str] | None]
# (template hash, container, handover slot): the replacement pod's
# (runtime/shim/plan.py destination_slot, as runtime/transfer's grant_slot).
SlotFn = Callable[[str, str, str], object]
SlotTest = Callable[[str, str, str], bool]
POLL_S = 0.5
START_GRACE_S = 15.0  # after the shim took the image: wait this long for the start record


def grant_slot(grant: Grant) -> str:
    """The handover slot a grant's image goes to: its replacement pod's."""
    return destination_slot(grant.ticket.namespace, grant.ticket.destination_pod)


def decode_grant(secret: Mapping[str, Any]) -> Grant:
    meta = secret.get("metadata") or {}
    where = f"grant Secret {meta.get('namespace')}/{meta.get('name')}"
    try:
        data = {
            str(k): base64.b64decode(str(v)).decode()
            for k, v in (secret.get("data") or {}).items()
        }
    except ValueError as e:
        raise TransferError(f"{where}: undecodable data ({e})") from None
    return grant_from_data(data, where)


@dataclass
class Grants:
    node: str
    fetch: FetchFn
    patch: PatchFn
    mark_pending: SlotFn
    handover_exists: SlotTest
    start_of: StartFn
    handover_ready: SlotTest = lambda h, c, s: False
    # Removes the ready image fetched for the replacement: it started fresh, so
    # nobody takes it, and left ready a restarted container of that pod would
    # restore it. The source keeps its own copy.
    discard_ready: SlotFn = lambda h, c, s: None
    clock: Callable[[], float] = time.time
    seen: set[str] = field(default_factory=set)  # grant Secret uids handled
    # One grant at a time per destination slot (template hash, container, slot),
    # and what its pod did, once it did: (what, until when a later grant may ask).
    slot_locks: dict[tuple[str, str, str], asyncio.Lock] = field(default_factory=dict)
    settled: dict[tuple[str, str, str], tuple[str, float]] = field(default_factory=dict)
    tasks: set[asyncio.Task[str]] = field(default_factory=set)
    results: list[str] = field(default_factory=list)  # for logs and tests

    def consider(self, secrets: list[dict[str, Any]]) -> int:
        """Start a transfer for each grant not seen before; how many started."""
        started = 0
        now = self.clock()
        for k in [k for k, (_, until) in self.settled.items() if now >= until]:
            del self.settled[k]
            lock = self.slot_locks.get(k)
            if lock is not None and not lock.locked():
                del self.slot_locks[k]
        for s in secrets:
            uid = str((s.get("metadata") or {}).get("uid") or (s.get("metadata") or {}).get("name"))
            if uid in self.seen:
                continue
            self.seen.add(uid)
            try:
                grant = decode_grant(s)
            except TransferError as e:
                log.warning("%s", e)  # nothing to report to: the ticket names the checkpoint
                continue
            if grant.ticket.destination_node != self.node:
                continue
            # At once: the replacement's Create must find the mark and wait.
            # (Fetched already, before a restart of this daemon: no mark.)
            slot = grant_slot(grant)
            key = (grant.template_hash, grant.container, slot)
            held = key in self.settled or (key in self.slot_locks and self.slot_locks[key].locked())
            # (Not when an earlier grant holds the slot: it marked it; or its pod
            # started already, and a mark now would outlive it.)
            if not held and not self.handover_ready(grant.template_hash, grant.container, slot):
                try:
                    self.mark_pending(grant.template_hash, grant.container, slot)
                except (TransferError, OSError) as e:
                    log.warning("grant for %s: %s", grant.ticket.name, e)
            task = asyncio.get_running_loop().create_task(self.run(grant))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            started += 1
        return started

    async def run(self, grant: Grant) -> str:
        t = grant.ticket
        key = (grant.template_hash, grant.container, grant_slot(grant))
        lock = self.slot_locks.setdefault(key, asyncio.Lock())
        async with lock:  # an earlier grant for this pod first: its image, its slot
            settled = self.settled.get(key)
            if settled is not None:
                what, _ = settled
                await self.patch(t.namespace, t.name, failed_patch(
                    t.destination_pod, f"{what}; handed back for another replacement",
                    retry=True))
                return self._done(f"{t.namespace}/{t.name}: handed back, "
                                  f"{t.destination_pod} {what}")
            return await self._run(grant)

    def _settle(self, grant: Grant, what: str) -> None:
        """The pod of ``grant`` started (``what`` it did): a later grant for it is
        handed back, up to the later of the tickets' expiry (none outlives that)."""
        key = (grant.template_hash, grant.container, grant_slot(grant))
        self.settled[key] = (what, max(self.clock(), float(grant.ticket.expires_at)) + 600.0)

    async def _run(self, grant: Grant) -> str:
        t = grant.ticket
        ref = f"{t.namespace}/{t.name}"
        slot = grant_slot(grant)
        t0 = time.monotonic()
        try:
            if self.handover_ready(grant.template_hash, grant.container, slot):
                log.info("%s: image fetched before this daemon started", ref)
            else:
                await self.fetch(grant)
        except (TransferError, OSError) as e:
            # This node's disk (or a handover withdrawn under the fetch) may be
            # fine on another node: retry. A replacement that started fresh
            # meanwhile (its scaleup-timeout passed while the transfer hung)
            # will never take it: final.
            retry = (not isinstance(e, TransferError) or transfer_retryable(str(e))) and (
                self.start_of(t.namespace, t.destination_pod, grant.container) is None)
            log.warning("transfer of %s failed (%s): %s", ref, "retry" if retry else "final", e)
            await self.patch(t.namespace, t.name, failed_patch(t.destination_pod, str(e),
                                                               retry=retry))
            return self._done(f"{ref}: failed ({'retry' if retry else 'final'}): {e}")
        log.info("fetched %s for %s in %.2fs", ref, t.destination_pod, time.monotonic() - t0)
        taken_at: float | None = None
        while self.clock() < t.expires_at:
            start = self.start_of(t.namespace, t.destination_pod, grant.container)
            if start is not None:
                outcome, reason = start
                took = taken_handover(reason)
                if outcome == "restored" and took and took != slot:
                    # A local handover (plan.claim_local goes first while this
                    # slot was still pending): not this image; it goes, nobody
                    # else may restore it here.
                    taken = what_was_taken(t.namespace, grant.container, took)
                    self._settle(grant, f"restored from {taken}")
                    await asyncio.to_thread(self.discard_ready, grant.template_hash,
                                            grant.container, slot)
                    await self.patch(t.namespace, t.name, failed_patch(
                        t.destination_pod, f"restored from {taken}, not this one; handed "
                        "back for another replacement", retry=True))
                    return self._done(f"{ref}: handed back, {t.destination_pod} took {took}")
                if outcome == "fresh":
                    self._settle(grant, f"started fresh ({reason})")
                    # Fetched now or before a restart of this daemon, after the
                    # replacement gave up on it (a daemon down, a transfer slower
                    # than scaleup-timeout).
                    await asyncio.to_thread(self.discard_ready, grant.template_hash,
                                            grant.container, slot)
                    await self.patch(t.namespace, t.name, failed_patch(
                        t.destination_pod, f"started fresh: {reason}", retry=False))
                    return self._done(f"{ref}: {t.destination_pod} started fresh")
                break
            if not self.handover_exists(grant.template_hash, grant.container, slot):
                taken_at = taken_at or time.monotonic()
                if time.monotonic() - taken_at >= START_GRACE_S:
                    break  # the shim took it; no start record here (see docs/critiques.md#daemon)
            await asyncio.sleep(POLL_S)
        else:
            await self.patch(t.namespace, t.name, failed_patch(
                t.destination_pod, "not restored before the ticket expired", retry=True))
            return self._done(f"{ref}: ticket expired before the restore")
        self._settle(grant, f"restored from Checkpoint {ref} (the image fetched for it first)")
        await self.patch(t.namespace, t.name,
                         consumed_patch(t.destination_pod, datetime.now(UTC)))
        return self._done(f"{ref}: consumed by {t.destination_pod} "
                          f"{time.monotonic() - t0:.2f}s after the grant")

    def _done(self, what: str) -> str:
        log.info("transfer %s", what)
        self.results.append(what)
        return what

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
