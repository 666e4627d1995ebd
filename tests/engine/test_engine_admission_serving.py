"""The operator's pod webhooks through kopf's own admission entry point, in-process.

Real kopf (``serve_admission_request`` bound as its reactor binds it) with the
handlers engine/operator.py registers; no API server. What is checked is what
the latency work (bench/admission_handler.py) changed: the handlers run on the
event loop, a denial is still answered and logged, an allowed one is not logged.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gc
import inspect
import json
import logging
import uuid
from typing import Any

import kopf
import pytest
from kopf._cogs.structs import references
from kopf._core.engines import admission, indexing
from kopf._core.reactor import inventory

from architect.engine import operator

P = "architect.loopholelabs.io/"


class NoKube:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"admission of a ReplicaSet's pod called kube.{name}")


def _serve() -> Any:
    insights = references.Insights()
    insights.webhook_resources.add(
        references.Resource(group="", version="v1", plural="pods", kind="Pod", namespaced=True)
    )
    return functools.partial(
        admission.serve_admission_request,
        settings=kopf.OperatorSettings(),
        registry=kopf.get_default_registry(),
        insights=insights,
        memories=inventory.ResourceMemories(),
        memobase=kopf.Memo(kube=NoKube()),
        indices=indexing.OperatorIndexers().indices,
    )


def _pod(annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-1",
            "namespace": "ns",
            "labels": {"app": "web", "pod-template-hash": "abc"},
            "annotations": annotations,
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "u1",
                 "controller": True}
            ],
        },
        "spec": {
            "runtimeClassName": "runc-architect",
            "containers": [{"name": "app", "image": "app:1",
                            "readinessProbe": {"tcpSocket": {"port": 8080}}}],
        },
    }  # fmt: skip


def _review(hook: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "userInfo": {"username": "test"},
            "object": obj,
            "dryRun": False,
        },
    }


GOOD = {
    P + "managed-containers": '["app"]',
    P + "network-monitor": '{"app":"packets"}',
    P + "health-check-proxy": json.dumps(
        {"mappings": [{"containerName": "app", "appPort": 8080, "shadowPort": 9080}]}
    ),
}


def test_pod_webhooks_are_coroutines() -> None:
    # kopf runs a plain function in a worker thread: the hop is what was removed.
    for fn in (operator.mutate_pod, operator.validate_pod, operator.validate_status):
        assert inspect.iscoroutinefunction(fn), fn


def test_mutate_allowed_with_the_sidecar_and_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kopf.objects")
    resp = asyncio.run(
        _serve()(_review("mutate-pod", _pod(GOOD)), webhook="mutate-pod", sslpeer={}, headers={})
    )
    assert resp["response"]["allowed"] is True
    ops = json.loads(base64.b64decode(resp["response"]["patch"]))
    init = [op for op in ops if op["path"] == "/spec/initContainers"]
    assert init and init[0]["value"][0]["name"] == "architect-health-9080", ops
    assert not [r for r in caplog.records if "succeeded" in r.getMessage()]


def test_bad_annotations_denied_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="kopf.objects")
    bad = {P + "managed-containers": '["nope"]'}
    for hook in ("mutate-pod", "validate-pod"):
        caplog.clear()
        obj = _pod(bad)
        obj["metadata"]["uid"] = "u2"
        resp = asyncio.run(_serve()(_review(hook, obj), webhook=hook, sslpeer={}, headers={}))
        assert resp["response"]["allowed"] is False, hook
        assert resp["response"]["status"]["code"] == 400
        assert "nope" in resp["response"]["status"]["message"]
        assert [r for r in caplog.records if r.levelno >= logging.ERROR and hook in r.getMessage()]


def test_settle_heap_freezes_what_exists() -> None:
    try:
        operator.settle_heap()
        assert gc.get_freeze_count() > 10_000  # the modules and classes at least
    finally:
        gc.unfreeze()
