"""kopf wiring only: every handler is a few lines that call ``engine.admission.handlers``
or ``engine.controlplane.handlers``.

Watches: kopf sends no label selectors, so the operator watches only
Architect's own, few objects (Checkpoint, PersistentCheckpoint). Pods and
workloads reach it through admission webhooks scoped by CEL matchConditions;
the per-node pod watch belongs to the daemon (filtered by spec.nodeName).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException
from prometheus_client import start_http_server

from architect.engine import metrics
from architect.engine.admission import handlers as admission
from architect.engine.admission.policycache import MigrationPolicyCache
from architect.engine.admission.webhooks import (
    MUTATE_POD,
    VALIDATE_CHECKPOINT_STATUS,
    VALIDATE_CRONJOB,
    VALIDATE_POD,
    VALIDATE_POD_UPDATE,
    VALIDATE_WORKLOAD,
)
from architect.engine.admission.workloads import AdmissionDenied, describe
from architect.engine.config import OperatorConfig
from architect.engine.controlplane import handlers as controlplane
from architect.engine.controlplane.trust import Trust, TrustError
from architect.engine.kubeclient import Kube, load_config
from architect.policy.annotations import GROUP, VERSION

log = logging.getLogger("architect.engine")
CONFIG: OperatorConfig = OperatorConfig()  # set by engine.serve before kopf starts
# What the pod webhook reads of MigrationPolicies (engine.admission.policycache).
MIGRATION_POLICIES = MigrationPolicyCache()


def _now() -> datetime:
    return datetime.now(UTC)


_KUBE: list[Kube] = []  # set at startup; for events posted outside kopf's handlers
_PENDING: set[asyncio.Task[None]] = set()


def _post_event(obj: Mapping[str, Any], etype: str, reason: str, message: str) -> None:
    try:
        kopf.event(
            kopf.Body(cast(kopf.RawBody, dict(obj))), type=etype, reason=reason, message=message
        )
    except LookupError:
        # kopf's event queue exists only inside its handlers' context (not in
        # the background GC task): post directly.
        if _KUBE:
            task = asyncio.get_running_loop().create_task(
                _KUBE[0].post_event(dict(obj), etype, reason, message)
            )
            _PENDING.add(task)
            task.add_done_callback(_PENDING.discard)


def _deny(err: AdmissionDenied, handler: str) -> kopf.AdmissionError:
    metrics.ADMISSIONS.labels(handler=handler, allowed="false").inc()
    return kopf.AdmissionError(str(err), code=400)


async def _gc_loop(kube: Kube, config: OperatorConfig) -> None:
    while True:
        try:
            await controlplane.collect_garbage(
                kube=kube, now=_now(), settings=config.gc, post_event=_post_event
            )
            await controlplane.refresh_policy_status(kube=kube, now=_now())
            trust = await _trust(kube)
            await controlplane.sweep_transfer(
                kube=kube, now=_now(), namespace=config.transfer.namespace, cluster=trust
            )
        except kopf.TemporaryError as err:  # a setup problem, already said plainly
            log.error("transfer sweep: %s", err)
        except Exception:  # one failed pass must not end the loop for good
            log.exception("garbage collection / status pass failed")
        await asyncio.sleep(config.gc_interval.total_seconds())


_TRUST: list[Trust] = []
TRANSFER_INTERVAL_S = 2.0  # how often a Ready checkpoint looks for its replacement pod


async def _trust(kube: Kube) -> Trust:
    """Read (or make) the transfer key and CA once; the Secret outlives the operator."""
    if not _TRUST:
        ns = CONFIG.trust_home
        try:
            _TRUST.append(
                await controlplane.load_trust(
                    ns, kube=kube, daemons_namespace=CONFIG.transfer.namespace
                )
            )
        except ApiException as err:
            # Say what is missing instead of a traceback per timer tick.
            raise kopf.TemporaryError(
                controlplane.trust_unavailable(ns, err.status, err.reason), delay=30
            ) from None
        except TrustError as err:
            raise kopf.TemporaryError(str(err), delay=30) from None
    return _TRUST[0]


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    cfg = CONFIG
    settings.admission.server = kopf.WebhookServer(
        addr=cfg.webhook_addr,
        port=cfg.webhook_port,
        host=cfg.webhook_host,
        certfile=cfg.cert_file,
        pkeyfile=cfg.key_file,
    )
    settings.admission.managed = None  # engine.admission.webhooks builds the configurations
    # Our CRDs' status has a schema, so kopf's state goes in annotations only.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kopf." + GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kopf." + GROUP)
    settings.posting.level = logging.WARNING
    memo.kube = Kube(load_config())
    _KUBE[:] = [memo.kube]
    await _load_migration_policies(memo.kube)
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port)
    memo.gc_task = asyncio.create_task(_gc_loop(memo.kube, cfg))
    settle_heap()


async def _load_migration_policies(kube: Kube) -> None:
    """Filled before kopf serves a webhook (startup runs first): a replacement
    admitted the moment a restarted operator is ready is told of its handover."""
    try:
        objs = await kube.list_objects("migrationpolicies")
    except Exception as err:  # the watch fills it once the API answers
        log.warning("MigrationPolicies not listed at startup (the watch fills them in): %s", err)
        return
    for note in MIGRATION_POLICIES.replace_all(objs):
        log.warning("%s", note)
    log.info("%d MigrationPolicies known to admission", len(MIGRATION_POLICIES))


def settle_heap() -> None:
    """Move what startup made (modules, classes, kopf, the kubernetes client: ~80,000
    objects kept for the process's life) out of the cyclic garbage collector's reach.
    A full collection otherwise walks them all and stops the process: 70 ms on the
    2-core test machine, about one per 7,500 pods admitted (bench/admission_handler.py
    in a loop); after this, 7 ms at most. Garbage made later is collected as before;
    an object from startup that later dies in a reference cycle is never freed (bounded
    by startup's heap)."""
    gc.collect()
    gc.freeze()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("gc_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- admission ---------------------------------------------------------------


class _QuietAnsweredWebhooks(logging.Filter):
    """Drops kopf's INFO line per answered webhook ("Webhook 'mutate-pod' succeeded."):
    one per pod create, written synchronously on the event loop that answers the API
    server (0.1-0.25 ms a pod, bench/admission_handler.py). The counter
    architect_admission_reviews_total counts them; denials and errors still log."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (
            record.levelno <= logging.INFO
            and msg.startswith("Webhook ")
            and msg.endswith(" succeeded.")
        )


_ANSWERED = _QuietAnsweredWebhooks()
logging.getLogger("kopf.objects").addFilter(_ANSWERED)  # once: addFilter skips a duplicate


# A coroutine, not a plain function: kopf runs a sync handler in a worker thread,
# and the hop (and the GIL handed back and forth under load) cost more than the
# sub-millisecond, CPU-only work itself; it never blocks on I/O.
@kopf.on.mutate("v1", "pods", id=MUTATE_POD, operations=["CREATE"])
async def mutate_pod(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    try:
        new = admission.mutate_pod(dict(body), CONFIG.sidecar, MIGRATION_POLICIES.policies())
    except AdmissionDenied as err:
        raise _deny(err, MUTATE_POD) from None

    def replace(raw: Any) -> None:
        raw.clear()
        raw.update(new)

    patch.fns.append(replace)
    metrics.ADMISSIONS.labels(handler=MUTATE_POD, allowed="true").inc()


async def _review(
    body: kopf.Body,
    dryrun: bool,
    memo: kopf.Memo,
    warnings: list[str],
    hid: str,
    old: Mapping[str, Any] | None = None,
) -> None:
    try:
        if hid == VALIDATE_POD_UPDATE:
            review = await admission.review_pod_update(
                dict(body), old, dryrun=dryrun, kube=memo.kube
            )
        else:
            review = await admission.review_workload(dict(body), dryrun=dryrun, kube=memo.kube)
    except AdmissionDenied as err:
        raise _deny(err, hid) from None
    warnings.extend(review.warnings)
    if review.ops:
        # After the response: the object is stored only once admission is done.
        task = asyncio.get_running_loop().create_task(_record(dict(body), review, memo.kube))
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)
    metrics.ADMISSIONS.labels(handler=hid, allowed="true").inc()


async def _record(body: dict[str, Any], review: admission.Review, kube: Kube) -> None:
    try:
        if not await admission.record_policies(body, review, kube=kube):
            log.info("%s was not stored; its policies were not recorded", describe(body))
    except Exception:  # logged: admission already answered
        log.exception("recording the policies of %s failed", describe(body))


@kopf.on.validate("v1", "pods", id=VALIDATE_POD, operations=["CREATE"], side_effects=True)
async def validate_pod(
    body: kopf.Body, dryrun: bool, memo: kopf.Memo, warnings: list[str], **_: Any
) -> None:
    await _review(body, dryrun, memo, warnings, VALIDATE_POD)


@kopf.on.validate("v1", "pods", id=VALIDATE_POD_UPDATE, operations=["UPDATE"], side_effects=True)
async def validate_pod_update(
    body: kopf.Body, dryrun: bool, memo: kopf.Memo, warnings: list[str], **kwargs: Any
) -> None:
    await _review(body, dryrun, memo, warnings, VALIDATE_POD_UPDATE, kwargs.get("old"))


@kopf.on.validate("apps", "v1", "deployments", id=VALIDATE_WORKLOAD, side_effects=True)
@kopf.on.validate("apps", "v1", "statefulsets", id=VALIDATE_WORKLOAD, side_effects=True)
@kopf.on.validate("apps", "v1", "replicasets", id=VALIDATE_WORKLOAD, side_effects=True)
@kopf.on.validate("apps", "v1", "daemonsets", id=VALIDATE_WORKLOAD, side_effects=True)
@kopf.on.validate("batch", "v1", "jobs", id=VALIDATE_WORKLOAD, side_effects=True)
async def validate_workload(
    body: kopf.Body, dryrun: bool, memo: kopf.Memo, warnings: list[str], **kwargs: Any
) -> None:
    if kwargs.get("operation") in ("CREATE", "UPDATE"):
        await _review(body, dryrun, memo, warnings, VALIDATE_WORKLOAD)


@kopf.on.validate("batch", "v1", "cronjobs", id=VALIDATE_CRONJOB, side_effects=True)
async def validate_cronjob(
    body: kopf.Body, dryrun: bool, memo: kopf.Memo, warnings: list[str], **kwargs: Any
) -> None:
    if kwargs.get("operation") in ("CREATE", "UPDATE"):
        await _review(body, dryrun, memo, warnings, VALIDATE_CRONJOB)


@kopf.on.validate(
    GROUP, VERSION, "checkpoints", id=VALIDATE_CHECKPOINT_STATUS, subresource="status"
)
@kopf.on.validate(
    GROUP, VERSION, "persistentcheckpoints", id=VALIDATE_CHECKPOINT_STATUS, subresource="status"
)
async def validate_status(body: kopf.Body, **kwargs: Any) -> None:  # CPU only, as mutate_pod
    old, new = kwargs.get("old"), kwargs.get("new")
    kind = str(body.get("kind", "Checkpoint"))
    try:
        admission.review_status_update(kind, old, new)
    except AdmissionDenied as err:
        raise _deny(err, VALIDATE_CHECKPOINT_STATUS) from None


# --- control plane -----------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "migrationpolicies")
async def migration_policy_event(type: str, body: kopf.Body, **_: Any) -> None:
    meta = body.get("metadata") or {}
    if type == "DELETED":
        MIGRATION_POLICIES.remove(str(meta.get("namespace") or "default"), str(meta.get("name")))
    elif (note := MIGRATION_POLICIES.put(dict(body))) is not None:
        log.warning("%s", note)


@kopf.on.event(GROUP, VERSION, "checkpoints")
async def checkpoint_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if type != "DELETED":
        await controlplane.on_checkpoint(dict(body), kube=memo.kube, now=_now(), post_event=_post_event)


@kopf.on.event(GROUP, VERSION, "persistentcheckpoints")
async def persistent_event(type: str, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    if type != "DELETED":
        await controlplane.on_persistent(dict(body), kube=memo.kube, now=_now(), post_event=_post_event)


def _transfer_candidate(body: kopf.Body, **_: Any) -> bool:
    return (body.get("status") or {}).get("phase") in ("Ready", "Restoring")


@kopf.timer(
    GROUP,
    VERSION,
    "checkpoints",
    id="coordinate-transfer",
    interval=TRANSFER_INTERVAL_S,
    when=_transfer_candidate,
)
async def coordinate_transfer(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Ready: claim for the replacement pod (with a grant across nodes);
    Restoring: hand back when its pod is gone. A timer, since pods are not
    watched: a replacement may be bound after the checkpoint is Ready."""
    trust = await _trust(memo.kube)
    done = await controlplane.coordinate_checkpoint(
        dict(body),
        kube=memo.kube,
        now=_now(),
        key=trust.key,
        settings=CONFIG.transfer,
        post_event=_post_event,
    )
    if done not in ("restoring", "waiting for a replacement pod", "nothing"):
        log.info("checkpoint %s/%s: %s", body.metadata.namespace, body.metadata.name, done)
