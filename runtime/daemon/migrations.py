"""Checkpoint objects for the handovers the shim writes, and what replacements did
with them. Decisions are ``checkpointobjects``' (pure); this module sequences the I/O
through two ports, so it is tested with fakes.

- ``armed``: migrate-on-stop was sent; remembered in ``<state dir>/migrations.json``
  so a restarted daemon still finishes the Checkpoint.
- ``written``: the shim's ``migrated`` / ``migrate-failed`` event (or, after a
  restart, a ready handover directory): pack the image for transfer
  (``runtime.transfer.export``, from a hard-linked snapshot: a replacement on
  this node may restore and remove the handover meanwhile), create the
  Checkpoint, set Ready or Failed.
- ``started``: a replacement container's start path (the shim's status
  record); resolved against this node's Checkpoints on every tick until the
  outcome is written (the object may not exist yet when the pod starts).
- ``reconcile``: those reports (only the Checkpoint whose handover the pod took
  is its; another claimed for it is handed back), dropping packed images whose
  Checkpoint is Consumed, Failed or gone, releasing claims of pods gone before
  they restored, and withdrawing this node's handovers that no pod may restore
  any more (restored elsewhere, Failed, or no Checkpoint names them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from architect.engine.controlplane.coordinate import failed_patch
from architect.runtime.daemon.checkpointobjects import (
    CLAIM_GRACE_S,
    SOURCE_SLOT_PREFIX,
    UNNAMED_CLAIM,
    UNNAMED_GRACE_S,
    WITHDRAW_CLAIM,
    HandoverSlot,
    Outcome,
    Written,
    checkpoint_body,
    checkpoint_name,
    claimant_gone,
    claimed_not_taken,
    consumed_checkpoint,
    incoming_handover,
    moved_handovers,
    outgoing_to_drop,
    report_outcome,
    slot_namespace,
    stale_claim_candidates,
    start_outcome,
    taken_handover,
    what_was_taken,
    withdrawn_handovers,
    written_status,
)
from architect.runtime.daemon.store import JsonStore

log = logging.getLogger("architect.daemon.checkpoints")


class NamespaceGone(Exception):
    """The Checkpoint's namespace is gone or being deleted: no replacement can come."""


class CheckpointApi(Protocol):
    async def create_checkpoint(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """Create; None when an object of that name exists already. Raises
        NamespaceGone when its namespace no longer takes new objects."""

    async def get_checkpoint(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def patch_checkpoint_status(
        self, namespace: str, name: str, patch: Any
    ) -> dict[str, Any] | None:
        """Merge patch (a dict) or JSON patch (a list, compare-and-swap): None when a
        ``test`` op failed or the object is gone."""

    def checkpoints(self) -> list[dict[str, Any]]:
        """This node's Checkpoints (a label-selected watch)."""

    async def of_template(
        self, namespace: str, template_hash: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The namespace's Checkpoints and pods labelled with ``template_hash``, any
        node (one list of each, read when a replacement appears)."""


class Images(Protocol):
    """The node's image directories (blocking; called in a worker thread)."""

    # ``slot``: whose handover of (template hash, container) (plan.source_slot of
    # the pod that left it, plan.destination_slot of the pod it was fetched for).
    def export(self, template_hash: str, container: str, slot: str) -> dict[str, Any]:
        """Pack the ready handover for transfer; the Checkpoint's spec.image.
        Raises TransferError."""

    def handover_ready(self, template_hash: str, container: str, slot: str) -> bool: ...

    def outgoing(self) -> list[tuple[str, str, str, float]]:
        """(template hash, container, image digest, age in seconds) of every packed image."""

    def drop(self, template_hash: str, container: str, digest: str) -> None: ...

    def handover_digest(self, template_hash: str, container: str, slot: str) -> str | None:
        """The manifest digest of the ready handover directory; None without one."""

    def drop_handover(self, template_hash: str, container: str, slot: str, digest: str) -> bool:
        """Remove the handover directory if it is still the image of ``digest``."""

    def discard_ready(self, template_hash: str, container: str, slot: str) -> bool:
        """Remove the handover directory if it holds a ready image."""

    def ready_handovers(self) -> list[HandoverSlot]:
        """Every ready handover directory a pod deleted on this node left."""

    def withdraw_handover(self, template_hash: str, container: str, slot: str,
                          digest: str) -> bool:
        """Take the handover away if it is still the image of ``digest`` and no
        local replacement has claimed it; False (nothing done) otherwise."""

    def release_claim(self, template_hash: str, container: str, slot: str,
                      claimant: str) -> bool:
        """Remove the handover's claimed mark if it still names ``claimant`` (a
        pod gone before it restored): takeable again. False otherwise."""

    def sweep(self) -> list[str]:
        """Remove what a killed daemon left half-written (a fetch's or a pack's
        scratch directory); what was removed."""


@dataclass
class Pending:
    """A replacement's start, not yet written to its Checkpoint."""

    namespace: str
    pod: str
    container: str
    template_hash: str
    outcome: Outcome
    reason: str
    since: float  # monotonic
    restoring_since: datetime | None = None  # first seen Restoring for this pod
    # The handover it took, if its start reason says: a local one (plan.source_slot)
    # or the one fetched for it (plan.destination_slot).
    slot: str = ""


MAX_PENDING_S = 600.0  # a start whose Checkpoint never appears is forgotten after this
# An armed record whose shim never reported (the container was gone before it
# could checkpoint, or its shim died): longer than any grace period plus a dump.
MAX_ARMED_S = 3600.0
ARMED_AT = "armed_at"


class Migrations:
    def __init__(
        self, api: CheckpointApi, images: Images, node: str, store: JsonStore | None = None
    ) -> None:
        self.api, self.images, self.node = api, images, node
        self.store = store if store is not None else JsonStore(None)
        self.pending: dict[tuple[str, str, str], Pending] = {}
        self.timings: dict[str, float] = {}  # checkpoint name -> monotonic creation
        self.moved: set[tuple[str, str, str, str]] = set()  # handovers looked at once
        # (template hash, container, slot) -> monotonic time its Checkpoint was
        # written: the watch may not show it yet, the handover must not look unnamed.
        self.wrote: dict[tuple[str, str, str], float] = {}
        # Claimed handovers whose claimant was looked up (monotonic): once a grace.
        self.claims_checked: dict[tuple[str, str, str, str], float] = {}

    # --- the source pod --------------------------------------------------------

    def armed(self, container_id: str, w: Written, now: datetime | None = None) -> None:
        record = {k: str(v) for k, v in asdict(w).items()}
        record[ARMED_AT] = (now or datetime.now(UTC)).isoformat()
        self.store.put_key(container_id, record)

    def armed_for(self, container_id: str) -> Written | None:
        raw = self.store.get_key(container_id)
        if raw is None:
            return None
        fields = {k: v for k, v in raw.items() if k != ARMED_AT}
        try:
            return Written(**fields)
        except TypeError:
            self.store.drop_key(container_id)
            return None

    async def expire(self, now: datetime) -> list[str]:
        """Armed records older than MAX_ARMED_S: finish those whose handover is
        ready (their event was lost), forget the others. What was done."""
        done: list[str] = []
        for cid, raw in list(self.store.data.items()):
            try:
                at = datetime.fromisoformat(raw.get(ARMED_AT, ""))
            except ValueError:  # a record of an older daemon: its age starts now
                self.store.put_key(cid, {**raw, ARMED_AT: now.isoformat()})
                continue
            if (now - at).total_seconds() <= MAX_ARMED_S:
                continue
            w = self.armed_for(cid)
            if w is None:
                continue
            if await self._finish_if_ready(cid, w):
                done.append(f"{w.namespace}/{w.pod}: late handover finished")
            else:
                self.store.drop_key(cid)
                log.warning("%s/%s container %s: armed %s ago, the shim never reported; "
                            "record dropped", w.namespace, w.pod, w.container, now - at)
                done.append(f"{w.namespace}/{w.pod}: stale armed record dropped")
        return done

    async def written(self, container_id: str, *, ok: bool, error: str = "") -> str | None:
        """The shim finished (or failed) the handover of ``container_id``; the
        Checkpoint's name, None when the container was not armed here."""
        w = self.armed_for(container_id)
        if w is None:
            return None
        name = checkpoint_name(w.pod, w.container)
        image: dict[str, Any] | None = None
        message = f"handover of {w.namespace}/{w.pod} container {w.container} written on {w.node}"
        handover: str | None = None
        if ok:
            try:
                handover = await asyncio.to_thread(
                    self.images.handover_digest, w.template_hash, w.container, w.slot)
                image = await asyncio.to_thread(
                    self.images.export, w.template_hash, w.container, w.slot)
            except Exception as e:  # a replacement here that claimed it still restores it
                ok, message = False, f"image not packed for transfer: {e}"
        else:
            message = f"the shim's checkpoint failed: {error}"
        body = checkpoint_body(w, image, handover)
        try:
            existing = await self.api.create_checkpoint(body)
        except NamespaceGone as e:
            # A namespace deletion took the pod: nothing can ever consume it.
            log.warning("handover of %s/%s container %s: no Checkpoint (%s); dropped",
                        w.namespace, w.pod, w.container, e)
            if image is not None:
                await asyncio.to_thread(self.images.drop, w.template_hash, w.container,
                                        str(image.get("digest") or ""))
            if handover is not None:
                # The handover too: left ready, it would hold the directory a pod
                # of the same template in another namespace restores or fetches into.
                await asyncio.to_thread(
                    self.images.drop_handover, w.template_hash, w.container, w.slot, handover)
            self.store.drop_key(container_id)
            return None
        if existing is None:  # made before a restart: finish it, never a second one
            existing = await self.api.get_checkpoint(w.namespace, name)
        else:
            existing = None  # just created: no status yet
            self.timings[name] = time.monotonic()
        patch = written_status(existing, ok=ok, message=message)
        if patch is not None:
            await self.api.patch_checkpoint_status(w.namespace, name, patch)
        log.info("Checkpoint %s/%s: %s (%s)", w.namespace, name,
                 "Ready" if ok else "Failed", message)
        self.wrote[(w.template_hash, w.container, w.slot)] = time.monotonic()
        self.store.drop_key(container_id)
        return name

    async def recover(self) -> int:
        """After a restart: drop the half-written images of the daemon that ran
        before (killed mid-fetch or mid-pack: nothing else removes them, and a
        grant seen again fetches anew), then finish the Checkpoints of handovers
        written while no daemon listened (the record says which pod; the
        directory says done)."""
        try:
            for what in await asyncio.to_thread(self.images.sweep):
                log.info("removed %s: left half-written by a daemon that was stopped", what)
        except OSError as e:  # the next start tries again; nothing depends on it
            log.warning("half-written images not removed: %s", e)
        done = 0
        for cid in list(self.store.data):
            w = self.armed_for(cid)
            try:
                if w is not None and await self._finish_if_ready(cid, w):
                    done += 1
            except Exception as e:  # one stale record must never stop the daemon
                log.warning("handover record %s (%s/%s): not recovered: %s", cid,
                            w.namespace if w else "?", w.pod if w else "?", e)
        return done

    async def _finish_if_ready(self, cid: str, w: Written) -> bool:
        """The Checkpoint of a handover whose shim event was lost, if it is written."""
        if not await asyncio.to_thread(
                self.images.handover_ready, w.template_hash, w.container, w.slot):
            return False
        await self.written(cid, ok=True)
        return True

    # --- the replacement -------------------------------------------------------

    async def incoming(
        self, namespace: str, pod: str, container: str, template_hash: str
    ) -> str | None:
        """What says another node's handover is on its way to ``pod`` (not started
        yet, on this node); None when nothing is. Raises on API errors."""
        checkpoints, pods = await self.api.of_template(namespace, template_hash)
        return incoming_handover(
            checkpoints, pods, namespace=namespace, template_hash=template_hash,
            container=container, pod=pod, node=self.node,
        )

    def started(
        self,
        namespace: str,
        pod: str,
        container: str,
        template_hash: str,
        start_path: str,
        start_reason: str,
    ) -> Outcome | None:
        outcome = start_outcome(start_path, start_reason, template_hash, container)
        if outcome is not None:
            key = (namespace, pod, container)
            self.pending.setdefault(
                key,
                Pending(namespace, pod, container, template_hash, outcome, start_reason,
                        time.monotonic(), slot=taken_handover(start_reason)),
            )
        return outcome

    async def reconcile(self, now: datetime) -> list[str]:
        """Write what replacements did; drop packed images nobody needs. What was
        written, for logs and tests."""
        done = await self.expire(now)
        snapshot = self.api.checkpoints()
        for key, p in list(self.pending.items()):
            if p.outcome == "restored" and p.slot:
                done += await self._hand_back_others(p, snapshot)
            local = not p.slot or p.slot.startswith(SOURCE_SLOT_PREFIX)
            # Restored from the image fetched for it: no Checkpoint of this node
            # is its (the grant reports on the other node's; the record stays
            # for it, Grants.start_of, until MAX_PENDING_S).
            ck = consumed_checkpoint(
                snapshot, namespace=p.namespace, template_hash=p.template_hash,
                container=p.container, pod=p.pod, node=self.node,
                slot=p.slot if local else "",
            ) if local else None
            if ck is None:
                if time.monotonic() - p.since > MAX_PENDING_S:
                    del self.pending[key]
                continue
            name = str((ck.get("metadata") or {}).get("name"))
            if p.restoring_since is None and (ck.get("status") or {}).get("phase") == "Restoring":
                p.restoring_since = now
            report = report_outcome(ck, pod=p.pod, outcome=p.outcome, reason=p.reason, now=now,
                                    restoring_since=p.restoring_since,
                                    taken=bool(p.slot) and local)
            if report.patch is not None:
                if await self.api.patch_checkpoint_status(p.namespace, name, report.patch) is None:
                    continue  # moved on meanwhile: look again with the next snapshot
                done.append(f"{p.namespace}/{name}: {report.why} by {p.pod}")
                if report.why.startswith("claimed"):
                    p.restoring_since = now
                if report.why == "consumed" and name in self.timings:
                    log.info("Checkpoint %s/%s: created to Consumed in %.2fs", p.namespace,
                             name, time.monotonic() - self.timings.pop(name))
            if report.done:
                del self.pending[key]
        entries = await asyncio.to_thread(self.images.outgoing)
        for thash, container, digest in outgoing_to_drop(entries, snapshot, node=self.node):
            await asyncio.to_thread(self.images.drop, thash, container, digest)
            done.append(f"dropped outgoing/{thash}/{container}/"
                        f"{digest.removeprefix('sha256:')[:12]}")
        for thash, container, slot, digest in moved_handovers(snapshot, node=self.node):
            if (thash, container, slot, digest) in self.moved:
                continue
            self.moved.add((thash, container, slot, digest))
            if await asyncio.to_thread(self.images.drop_handover, thash, container, slot, digest):
                done.append(f"dropped handover/{thash}/{container}/{slot}: "
                            "restored on another node")
        done += await self._withdraw(snapshot)
        return done

    async def _hand_back_others(self, p: Pending, snapshot: list[dict[str, Any]]) -> list[str]:
        """The control plane may claim two of this node's Checkpoints for one
        replacement (its snapshot lagged its own claim): only the one whose
        handover the pod took is its; the others go back to Ready for another
        replacement, saying which one it took."""
        if not any((c.get("status") or {}).get("consumedBy") == p.pod for c in snapshot):
            return []  # the common case: no I/O
        others = claimed_not_taken(
            snapshot, await asyncio.to_thread(self.images.ready_handovers),
            namespace=p.namespace, template_hash=p.template_hash, container=p.container,
            pod=p.pod, node=self.node, slot=p.slot)
        done = []
        took = what_was_taken(p.namespace, p.container, p.slot)
        for c in others:
            name = str((c.get("metadata") or {}).get("name"))
            patch = failed_patch(p.pod, f"restored from {took}, not this one; handed back "
                                 "for another replacement", retry=True)
            if await self.api.patch_checkpoint_status(p.namespace, name, patch) is not None:
                log.info("Checkpoint %s/%s: handed back, %s took %s", p.namespace, name,
                         p.pod, took)
                done.append(f"{p.namespace}/{name}: handed back ({p.pod} took {p.slot})")
        return done

    def _keep(self) -> set[tuple[str, str, str]]:
        """Handovers whose Checkpoint may be missing from the snapshot yet: armed
        (a restarted daemon still creates it) or written within the grace."""
        cutoff = time.monotonic() - UNNAMED_GRACE_S
        for k in [k for k, t in self.wrote.items() if t < cutoff]:
            del self.wrote[k]
        keep = set(self.wrote)
        for cid in list(self.store.data):
            w = self.armed_for(cid)
            if w is not None:
                keep.add((w.template_hash, w.container, w.slot))
        return keep

    async def _withdraw(self, snapshot: list[dict[str, Any]]) -> list[str]:
        """Handovers of Failed migrations (or that nothing names any more) go, so
        the next pod of the template here starts fresh instead of restoring state
        older than what ran since."""
        slots = await asyncio.to_thread(self.images.ready_handovers)
        done, released = await self._release_stale_claims(slots)
        slots = [dataclasses.replace(s, claimed_by="")
                 if (s.template_hash, s.container, s.slot) in released else s for s in slots]
        for thash, container, slot, digest, why in withdrawn_handovers(
                slots, snapshot, node=self.node, keep=self._keep()):
            if await asyncio.to_thread(
                    self.images.withdraw_handover, thash, container, slot, digest):
                done.append(f"withdrew handover/{thash}/{container}/{slot}: {why}")
        return done

    async def _release_stale_claims(
        self, slots: list[HandoverSlot]
    ) -> tuple[list[str], set[tuple[str, str, str]]]:
        """A handover a local replacement claimed and never restored (its pod was
        deleted first) would stay claimed, untakeable and never withdrawn: its
        claim goes once the API says the pod is gone from this node or being
        deleted; then the handover is any other (withdrawn_handovers: kept while
        a live Checkpoint names it, for another replacement). Each claimant is
        looked up at most once a grace (an API list of its template's pods)."""
        now = time.monotonic()
        for k in [k for k, t in self.claims_checked.items() if now - t >= CLAIM_GRACE_S]:
            del self.claims_checked[k]
        groups: dict[tuple[str, str], list[HandoverSlot]] = {}
        for s in stale_claim_candidates(slots):
            k = (s.template_hash, s.container, s.slot, s.claimed_by)
            if k not in self.claims_checked:
                self.claims_checked[k] = now
                groups.setdefault((slot_namespace(s.slot), s.template_hash), []).append(s)
        done: list[str] = []
        released: set[tuple[str, str, str]] = set()
        for (ns, thash), group in sorted(groups.items(), key=lambda g: g[0]):
            try:
                _, pods = await self.api.of_template(ns, thash)
            except Exception as e:  # the API may be away: after the grace again
                log.warning("claimants of handovers of %s/%s not looked up: %s", ns, thash, e)
                continue
            for s in group:
                why = claimant_gone(pods, namespace=ns, pod=s.claimed_by, node=self.node)
                if why is None or not await asyncio.to_thread(
                        self.images.release_claim, s.template_hash, s.container, s.slot,
                        s.claimed_by):
                    continue
                log.info("handover/%s/%s/%s: claim of %s released (%s, %ds after its claim)",
                         s.template_hash, s.container, s.slot, s.claimed_by, why,
                         s.claimed_age_s)
                released.add((s.template_hash, s.container, s.slot))
                done.append(f"released claim of handover/{s.template_hash}/{s.container}/"
                            f"{s.slot}: {why}")
        return done, released


class NodeImages:
    """``Images`` on the shim's state root (runtime/transfer's layout)."""

    def __init__(self, root: Path, node: str) -> None:
        self.root, self.node = root, node

    def handover_ready(self, template_hash: str, container: str, slot: str) -> bool:
        from architect.runtime.shim.plan import READY_MARK, handover_dir

        return (handover_dir(self.root, template_hash, container, slot) / READY_MARK).exists()

    def export(self, template_hash: str, container: str, slot: str) -> dict[str, Any]:
        from architect.runtime.shim.plan import handover_dir
        from architect.runtime.transfer import export
        from architect.runtime.transfer.images import OUTGOING, outgoing_dir

        src = handover_dir(self.root, template_hash, container, slot)
        # A replacement on this node restores from (and removes) the handover at
        # once: pack from hard links of its files, which outlive that removal.
        snap = self.root / OUTGOING / f".snap-{uuid.uuid4().hex[:8]}"
        copy = handover_dir(snap, template_hash, container, slot)
        try:
            shutil.copytree(src, copy, copy_function=os.link)
            ref = export(snap, self.node, template_hash, container, slot)
            final = outgoing_dir(self.root, template_hash, container, ref.digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            if not final.is_dir():  # there already: the same bytes, packed before
                os.rename(outgoing_dir(snap, template_hash, container, ref.digest), final)
        finally:
            shutil.rmtree(snap, ignore_errors=True)
        return ref.as_spec()

    def handover_digest(self, template_hash: str, container: str, slot: str) -> str | None:
        from architect.runtime.shim.plan import READY_MARK, handover_dir, manifest_digest

        d = handover_dir(self.root, template_hash, container, slot)
        try:
            return manifest_digest(d) if (d / READY_MARK).exists() else None
        except OSError:  # a replacement on this node took it meanwhile
            return None

    def drop_handover(self, template_hash: str, container: str, slot: str, digest: str) -> bool:
        from architect.runtime.shim.plan import handover_dir, prune_handover_parents

        if self.handover_digest(template_hash, container, slot) != digest:
            return False  # gone, or not the image that moved
        d = handover_dir(self.root, template_hash, container, slot)
        shutil.rmtree(d, ignore_errors=True)
        prune_handover_parents(d)
        return True

    def discard_ready(self, template_hash: str, container: str, slot: str) -> bool:
        """Remove the handover directory if it holds a ready image."""
        from architect.runtime.shim.plan import READY_MARK, handover_dir, prune_handover_parents

        d = handover_dir(self.root, template_hash, container, slot)
        if not (d / READY_MARK).exists():
            return False
        shutil.rmtree(d, ignore_errors=True)
        prune_handover_parents(d)
        return True

    def ready_handovers(self) -> list[HandoverSlot]:
        from architect.runtime.shim.plan import CLAIMED_MARK, READY_MARK, manifest_digest

        base = self.root / "handover"
        out: list[HandoverSlot] = []
        now = time.time()
        for h in _subdirs(base):
            for c in _subdirs(h):
                for d in _subdirs(c):
                    if not d.name.startswith(SOURCE_SLOT_PREFIX):
                        continue
                    try:  # a replacement may take and remove it meanwhile
                        age = now - (d / READY_MARK).stat().st_mtime
                        digest = manifest_digest(d)
                    except OSError:
                        continue
                    claimed_age = 0.0
                    try:
                        claimed_age = now - (d / CLAIMED_MARK).stat().st_mtime
                        # Empty (created, not written yet, or by hand): nobody's name.
                        claimed = (d / CLAIMED_MARK).read_text(encoding="utf-8") or UNNAMED_CLAIM
                    except FileNotFoundError:
                        claimed = ""
                    except OSError:  # unreadable: a claim all the same, never taken away
                        claimed = UNNAMED_CLAIM
                    out.append(HandoverSlot(h.name, c.name, d.name, digest, age, claimed,
                                            claimed_age))
        return out

    def withdraw_handover(self, template_hash: str, container: str, slot: str,
                          digest: str) -> bool:
        """Claim it as a replacement would (O_EXCL on ``claimed``): a shim whose
        claim came first keeps it; one that comes after finds it taken and starts
        fresh. Then rename it to a fetch-scratch name (swept at the daemon's start,
        should it be stopped mid-removal) and remove it."""
        from architect.runtime.shim.plan import (
            CLAIMED_MARK,
            claim_slot,
            handover_dir,
            prune_handover_parents,
        )

        if self.handover_digest(template_hash, container, slot) != digest:
            return False  # gone, or not the image decided on
        d = handover_dir(self.root, template_hash, container, slot)
        if not claim_slot(d, WITHDRAW_CLAIM):
            return False  # a local replacement's (it restores it), or removed meanwhile
        if self.handover_digest(template_hash, container, slot) != digest:
            # A pod of the same name writes a new handover here (its shim keeps
            # claimed marks): not ours to take.
            (d / CLAIMED_MARK).unlink(missing_ok=True)
            return False
        # rename: the name runtime/transfer's scratch_dirs sweeps (".<x>.incoming-<8 hex>")
        scratch = d.parent / f".{slot}.withdrawn.incoming-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(d, scratch)
        except OSError:
            return False
        shutil.rmtree(scratch, ignore_errors=True)
        prune_handover_parents(d)
        return True

    def release_claim(self, template_hash: str, container: str, slot: str,
                      claimant: str) -> bool:
        """Remove the claimed mark if it still names ``claimant``. Only that pod's
        shim could have written it (O_EXCL), and it is gone; a shim claiming
        after this finds the handover free."""
        from architect.runtime.shim.plan import CLAIMED_MARK, handover_dir

        mark = handover_dir(self.root, template_hash, container, slot) / CLAIMED_MARK
        try:
            if mark.read_text(encoding="utf-8") != claimant:
                return False
            mark.unlink()
        except OSError:  # taken and removed meanwhile
            return False
        return True

    def sweep(self) -> list[str]:
        from architect.runtime.transfer.images import scratch_dirs

        gone = []
        for d in scratch_dirs(self.root):
            shutil.rmtree(d, ignore_errors=True)
            gone.append(str(d.relative_to(self.root)))
        return gone

    def outgoing(self) -> list[tuple[str, str, str, float]]:
        from architect.runtime.transfer.images import OUTGOING

        base = self.root / OUTGOING
        out: list[tuple[str, str, str, float]] = []
        now = time.time()
        if not base.is_dir():
            return out
        for h in base.iterdir():
            if h.name.startswith(".") or not h.is_dir():
                continue
            for c in h.iterdir():
                if not c.is_dir() or c.name.startswith("."):
                    continue
                for d in c.iterdir():
                    if d.is_dir() and not d.name.startswith("."):
                        out.append((h.name, c.name, f"sha256:{d.name}", now - d.stat().st_mtime))
        return out

    def drop(self, template_hash: str, container: str, digest: str) -> None:
        from architect.runtime.transfer import remove_outgoing

        remove_outgoing(self.root, template_hash, container, digest)


def _subdirs(d: Path) -> list[Path]:
    """``d``'s directories, not hidden ones (scratch) nor symlinks; none if it is gone."""
    try:
        return [e for e in d.iterdir()
                if not e.name.startswith(".") and e.is_dir() and not e.is_symlink()]
    except OSError:
        return []
