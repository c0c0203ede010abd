"""Kubernetes objects as the cluster receives them, checked offline against the official schemas.

`kubernetes-validate` ships the Kubernetes OpenAPI schemas; `--strict` rejects any property a kind does not
have (a field at the wrong level). The schemas type enum-like fields as plain strings, so `enum_errors`
checks the values that matter to our Jobs and worker.
"""

from __future__ import annotations

import shlex
from copy import deepcopy
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

# The Kubernetes version the manifests are validated against (kubernetes-validate==1.37.0 ships 1.25-1.37).
KUBERNETES_VERSION = "1.33.0"

RESTART_POLICIES = {"Job": {"Never", "OnFailure"}, "Deployment": {"Always"}}
IMAGE_PULL_POLICIES = {"Always", "IfNotPresent", "Never"}
TOLERATION_OPERATORS = {"Exists", "Equal"}
TAINT_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}
EMPTYDIR_MEDIA = {"", "Memory"}


def strip_nulls(value: Any) -> Any:
    """A copy without null values (the API server treats a null field as unset)."""
    if isinstance(value, dict):
        return {k: strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [strip_nulls(v) for v in value if v is not None]
    return value


def as_submitted(job_configuration: dict[str, Any]) -> dict[str, Any]:
    """The Job of a rendered job configuration as prefect-kubernetes' worker sends it: `env` (a mapping in the
    template) becomes a list of name/value pairs, `args` (the command string) a list, the run's labels are put
    on the pod too, and nulls are left out."""
    job = deepcopy(job_configuration["job_manifest"])
    pod_template = job["spec"]["template"]
    container = pod_template["spec"]["containers"][0]
    env = container.get("env")
    if isinstance(env, dict):
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    if isinstance(container.get("args"), str):
        container["args"] = shlex.split(container["args"])
    labels = job_configuration.get("labels") or {}
    pod_template.setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    return strip_nulls(job)


def documents(path: Path) -> list[dict[str, Any]]:
    """The objects of a YAML manifest file."""
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def validate_strictly(resource: dict[str, Any]) -> None:
    """An AssertionError naming the object, the path and the schema's complaint when `resource` is invalid;
    kubernetes_validate's SchemaNotFoundError for a kind it has no schema for."""
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        meta = resource.get("metadata", {})
        name = meta.get("name") or meta.get("generateName", "")
        where = ".".join(map(str, exc.path)) or "(top level)"
        raise AssertionError(
            f"{resource['kind']} {name}: {where}: {exc.message} (Kubernetes {exc.version}, strict)"
        ) from None


def pod_spec(resource: dict[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a Job or Deployment, None for other kinds."""
    if resource["kind"] in RESTART_POLICIES:
        return resource["spec"]["template"]["spec"]
    return None


def enum_errors(resource: dict[str, Any]) -> list[str]:
    """Values the schema accepts as strings but the API server rejects, as `path: value` lines."""
    spec = pod_spec(resource)
    if spec is None:
        return []
    errors = []
    allowed = RESTART_POLICIES[resource["kind"]]
    if spec.get("restartPolicy", "Always") not in allowed:
        errors.append(
            f"restartPolicy: {spec.get('restartPolicy', 'Always')!r} (a {resource['kind']} allows {sorted(allowed)})"
        )
    for i, container in enumerate(spec.get("initContainers", []) + spec["containers"]):
        if "imagePullPolicy" in container and container["imagePullPolicy"] not in IMAGE_PULL_POLICIES:
            errors.append(f"containers[{i}].imagePullPolicy: {container['imagePullPolicy']!r}")
    for i, toleration in enumerate(spec.get("tolerations", [])):
        if toleration.get("operator", "Equal") not in TOLERATION_OPERATORS:
            errors.append(f"tolerations[{i}].operator: {toleration['operator']!r}")
        if "effect" in toleration and toleration["effect"] not in TAINT_EFFECTS:
            errors.append(f"tolerations[{i}].effect: {toleration['effect']!r}")
    for volume in spec.get("volumes", []):
        if "emptyDir" in volume and volume["emptyDir"].get("medium", "") not in EMPTYDIR_MEDIA:
            errors.append(f"volumes[{volume['name']}].emptyDir.medium: {volume['emptyDir']['medium']!r}")
    return errors
