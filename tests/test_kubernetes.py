"""Every Kubernetes object we ship, validated offline and strictly against the Kubernetes schemas: the Jobs that
the work-pool templates render to (with the values a worker fills in) and the manifests in infra/k8s/."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.kubernetes import (
    IMAGE_PULL_POLICIES,
    KUBERNETES_VERSION,
    as_submitted,
    documents,
    enum_errors,
    validate_strictly,
)

from dialsum.orchestration.placement import POOLS, assign, load_template, render_job_configuration

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "infra" / "k8s").glob("*.yaml"))
KUBERNETES_POOLS = [pool for pool in POOLS.values() if pool.type == "kubernetes"]
# What a worker fills in for a flow run: its name, the command, Prefect's environment and labels.
RUN = {
    "name": "train-model-kobart",
    "command": "prefect flow-run execute",
    "env": {
        "PREFECT__FLOW_RUN_ID": "0b1c2d3e-0000-4000-8000-000000000001",
        "PREFECT_API_URL": "http://prefect:4200/api",
    },
    "labels": {
        "prefect.io/flow-run-id": "0b1c2d3e-0000-4000-8000-000000000001",
        "prefect.io/flow-run-name": "crafty-penguin",
    },
}
EVERYTHING = {
    "gpu_count": 2,
    "image": "registry.example.com/dialsum-trainer:1.0",
    "image_pull_policy": "Always",
    "namespace": "ml",
    "secret_name": "ml-env",
    "node_selector": {"gpu": "a100"},
    "tolerations": [{"key": "gpu", "operator": "Equal", "value": "a100", "effect": "NoExecute"}],
    "memory_limit": "64Gi",
    "memory_request": "48Gi",
    "cpu_request": "8",
    "service_account_name": "dialsum-trainer",
    "backoff_limit": 1,
    "finished_job_ttl": None,
    "pod_watch_timeout_seconds": 1800,
    "stream_output": False,
}
VARIABLES = {
    "defaults": {},
    "placed": assign(["kobart"], "k8s", gpus_per_model=4)[0].job_variables,
    "everything": EVERYTHING,
}


def submitted_job(pool, variables: dict) -> dict:
    return as_submitted(render_job_configuration(load_template(pool), {**variables, **RUN}))


@pytest.mark.parametrize("variables", VARIABLES.values(), ids=VARIABLES.keys())
@pytest.mark.parametrize("pool", KUBERNETES_POOLS, ids=lambda p: p.name)
def test_pool_templates_render_strictly_valid_jobs(pool, variables: dict) -> None:
    job = submitted_job(pool, variables)
    validate_strictly(job)
    assert enum_errors(job) == []
    # Kubernetes reads these two on the Job (1 and 1 are its defaults); prefect-kubernetes' worker refuses a
    # template without them, and Kubernetes has no such fields in a pod spec.
    assert (job["spec"]["parallelism"], job["spec"]["completions"]) == (1, 1)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert {"name": "PREFECT_API_URL", "value": "http://prefect:4200/api"} in container["env"]


def test_every_image_pull_policy_a_pool_offers_is_one_kubernetes_knows() -> None:
    for pool in KUBERNETES_POOLS:
        offered = load_template(pool)["variables"]["properties"]["image_pull_policy"]["enum"]
        assert set(offered) <= IMAGE_PULL_POLICIES
        for policy in offered:
            assert enum_errors(submitted_job(pool, {"image_pull_policy": policy})) == []


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_infra_manifests_are_strictly_valid(path: Path) -> None:
    objects = documents(path)
    assert objects, f"{path} holds no object"
    for resource in objects:
        validate_strictly(resource)
        assert enum_errors(resource) == [], f"{resource['kind']}/{resource['metadata']['name']}"


def test_the_worker_manifest_serves_the_pool_and_namespace_of_the_template() -> None:
    (pool,) = KUBERNETES_POOLS
    template = load_template(pool)
    objects = {(o["kind"], o["metadata"]["name"]): o for o in documents(ROOT / "infra" / "k8s" / "worker.yaml")}
    deployment = objects[("Deployment", "dialsum-worker")]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--pool") + 1] == pool.name and args[args.index("--type") + 1] == pool.type
    namespace = template["variables"]["properties"]["namespace"]["default"]
    assert ("Namespace", namespace) in objects
    assert all(o["metadata"].get("namespace", namespace) == namespace for o in objects.values())
    rules = objects[("Role", "dialsum-worker")]["rules"]
    assert any("jobs" in r["resources"] and "create" in r["verbs"] for r in rules)


def test_a_field_at_the_wrong_level_fails_strict_validation() -> None:
    """The check itself: `completions` in the pod spec (where Prefect's default template puts it)."""
    job = submitted_job(KUBERNETES_POOLS[0], {})
    job["spec"]["template"]["spec"]["completions"] = job["spec"].pop("completions")
    with pytest.raises(AssertionError) as failure:
        validate_strictly(job)
    version = KUBERNETES_VERSION.rsplit(".", 1)[0]
    assert str(failure.value) == (
        f"Job train-model-kobart-: spec.template.spec: Additional properties are not allowed "
        f"('completions' was unexpected) (Kubernetes {version}, strict)"
    )


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("restartPolicy", "Always", "restartPolicy: 'Always' (a Job allows ['Never', 'OnFailure'])"),
        ("imagePullPolicy", "ifNotPresent", "containers[0].imagePullPolicy: 'ifNotPresent'"),
    ],
)
def test_enum_values_the_schema_lets_through_are_caught(field: str, value: str, error: str) -> None:
    job = submitted_job(KUBERNETES_POOLS[0], {})
    spec = job["spec"]["template"]["spec"]
    (spec if field == "restartPolicy" else spec["containers"][0])[field] = value
    validate_strictly(job)  # a string is all the schema asks for
    assert enum_errors(job) == [error]
