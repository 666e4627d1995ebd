"""The Mutating/ValidatingWebhookConfiguration objects, built as plain dicts.

Scoping is the point: a Pod or workload with neither an Architect annotation
nor an Architect runtime class never reaches the webhook, because CEL
``matchConditions`` are evaluated inside the API server. So the webhook's
failurePolicy (Fail) can only ever block objects that asked for Architect.
See docs/engine.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from architect.policy.annotations import GROUP, PREFIX, RUNTIME_CLASSES, WRITTEN_BY_ARCHITECT

# Handler ids: also the URL path of each webhook on kopf's server.
MUTATE_POD = "mutate-pod"
VALIDATE_POD = "validate-pod"
VALIDATE_POD_UPDATE = "validate-pod-update"
VALIDATE_WORKLOAD = "validate-workload"
VALIDATE_CRONJOB = "validate-cronjob"
VALIDATE_CHECKPOINT_STATUS = "validate-checkpoint-status"

CONFIG_NAME = "architect.loopholelabs.io"


@dataclass(frozen=True)
class ClientConfig:
    """Where the API server reaches the webhook server: a URL or a Service."""

    ca_bundle: str  # base64 PEM
    url: str | None = None
    service_namespace: str | None = None
    service_name: str | None = None
    service_port: int = 443

    def for_handler(self, handler_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {"caBundle": self.ca_bundle}
        if self.url is not None:
            out["url"] = f"{self.url.rstrip('/')}/{handler_id}"
        else:
            out["service"] = {
                "namespace": self.service_namespace,
                "name": self.service_name,
                "port": self.service_port,
                "path": f"/{handler_id}",
            }
        return out


@dataclass(frozen=True)
class Scope:
    # Namespaces never sent to the webhook: the system's own, so a broken
    # webhook can never block the pods that would repair it.
    excluded_namespaces: Sequence[str] = field(default=("kube-system", "architect-system"))
    # Only namespaces with these labels (None: all but the excluded ones).
    namespace_labels: Mapping[str, str] | None = None
    timeout_seconds: int = 5


def intent_expression(template: str) -> str:
    """CEL: the pod template at ``template`` asks for Architect."""
    classes = ", ".join(f"'{c}'" for c in sorted(RUNTIME_CLASSES))
    return (
        f"(has({template}.spec.runtimeClassName) && {template}.spec.runtimeClassName in [{classes}])"
        f" || (has({template}.metadata.annotations) && "
        f"{template}.metadata.annotations.exists(k, k.startsWith('{PREFIX}')))"
    )


def annotations_changed_expression() -> str:
    """CEL: an UPDATE changed, added or removed a user-written Architect annotation.

    Only those edits reach the pod-update webhook: the daemon's own status
    annotation and every other pod update (labels, finalizers, kubelet's) never
    do, so they cannot be slowed or blocked by it."""
    ours = " && ".join(f"k != '{k}'" for k in sorted(WRITTEN_BY_ARCHITECT))
    new, old = "object.metadata.annotations", "oldObject.metadata.annotations"
    has_new, has_old = f"has({new})", f"has({old})"
    changed = (
        f"({has_new} && {new}.exists(k, k.startsWith('{PREFIX}') && {ours} && "
        f"(!{has_old} || !(k in {old}) || {old}[k] != {new}[k])))"
    )
    removed = (
        f"({has_old} && {old}.exists(k, k.startsWith('{PREFIX}') && {ours} && "
        f"(!{has_new} || !(k in {new}))))"
    )
    return f"request.operation == 'UPDATE' && ({changed} || {removed})"


def _namespace_selector(scope: Scope) -> dict[str, Any]:
    sel: dict[str, Any] = {
        "matchExpressions": [
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": list(scope.excluded_namespaces),
            }
        ]
    }
    if scope.namespace_labels:
        sel["matchLabels"] = dict(scope.namespace_labels)
    return sel


def _webhook(
    name: str,
    handler: str,
    rules: list[dict[str, Any]],
    client: ClientConfig,
    scope: Scope,
    conditions: list[dict[str, str]],
    *,
    side_effects: str = "None",
    failure_policy: str = "Fail",
) -> dict[str, Any]:
    hook: dict[str, Any] = {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": client.for_handler(handler),
        "rules": rules,
        "failurePolicy": failure_policy,
        "sideEffects": side_effects,
        "timeoutSeconds": scope.timeout_seconds,
        "matchPolicy": "Equivalent",
        "namespaceSelector": _namespace_selector(scope),
    }
    if conditions:
        hook["matchConditions"] = conditions
    return hook


def _rule(group: str, resources: list[str], operations: list[str]) -> dict[str, Any]:
    return {
        "apiGroups": [group],
        "apiVersions": ["v1alpha1" if group == GROUP else "v1"],
        "resources": resources,
        "operations": operations,
        "scope": "Namespaced",
    }


def _intent_conditions(template_of_object: str, template_of_old: str) -> list[dict[str, str]]:
    new = intent_expression(template_of_object)
    old = intent_expression(template_of_old)
    # On UPDATE the old object counts too: removing the annotations must reach
    # the webhook, which then deletes the compiled policies.
    return [
        {
            "name": "architect-intent",
            "expression": f"({new}) || (oldObject != null && ({old}))",
        }
    ]


def build_configurations(
    client: ClientConfig, scope: Scope = Scope(), name: str = CONFIG_NAME
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(MutatingWebhookConfiguration, ValidatingWebhookConfiguration)."""
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            _webhook(
                f"mutate-pods.{GROUP}",
                MUTATE_POD,
                [_rule("", ["pods"], ["CREATE"])],
                client,
                scope,
                [{"name": "architect-intent", "expression": intent_expression("object")}],
            )
        ],
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            # Validation of pods runs after the API server has given the pod its
            # uid, which a bare pod's compiled policies need as their owner.
            _webhook(
                f"pods.{GROUP}",
                VALIDATE_POD,
                [_rule("", ["pods"], ["CREATE"])],
                client,
                scope,
                [{"name": "architect-intent", "expression": intent_expression("object")}],
                side_effects="NoneOnDryRun",
            ),
            # Annotations edited on an existing pod: validated, a bare pod's
            # policies recompiled. Only such edits are sent (see the condition).
            _webhook(
                f"pod-updates.{GROUP}",
                VALIDATE_POD_UPDATE,
                [_rule("", ["pods"], ["UPDATE"])],
                client,
                scope,
                [
                    {
                        "name": "architect-annotations-edited",
                        "expression": annotations_changed_expression(),
                    }
                ],
                side_effects="NoneOnDryRun",
            ),
            _webhook(
                f"workloads.{GROUP}",
                VALIDATE_WORKLOAD,
                [
                    _rule(
                        "apps",
                        ["deployments", "statefulsets", "replicasets", "daemonsets"],
                        ["CREATE", "UPDATE"],
                    ),
                    _rule("batch", ["jobs"], ["CREATE", "UPDATE"]),
                ],
                client,
                scope,
                _intent_conditions("object.spec.template", "oldObject.spec.template"),
                side_effects="NoneOnDryRun",
            ),
            _webhook(
                f"cronjobs.{GROUP}",
                VALIDATE_CRONJOB,
                [_rule("batch", ["cronjobs"], ["CREATE", "UPDATE"])],
                client,
                scope,
                _intent_conditions(
                    "object.spec.jobTemplate.spec.template",
                    "oldObject.spec.jobTemplate.spec.template",
                ),
                side_effects="NoneOnDryRun",
            ),
            _webhook(
                f"checkpoint-status.{GROUP}",
                VALIDATE_CHECKPOINT_STATUS,
                [_rule(GROUP, ["checkpoints/status", "persistentcheckpoints/status"], ["UPDATE"])],
                client,
                scope,
                [],
                # A control-plane outage must not stall a migration under way; the
                # control plane re-checks every transition it observes.
                failure_policy="Ignore",
            ),
        ],
    }
    return mutating, validating
