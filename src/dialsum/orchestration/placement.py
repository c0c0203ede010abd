"""Where training runs go: one table maps a target to its work pool, queues, deployment and GPU use.

A target names the infrastructure a `train-model` child run lands on: `process` (the worker's own
process), `process-gpu` (a process per run on a GPU box without Docker, pinned to one GPU through a per-GPU work
queue and `CUDA_VISIBLE_DEVICES`), `docker-gpu` (one container per run on a local GPU box, pinned to one GPU through a
per-GPU work queue), `docker-cpu` (one container per run on a Docker host without GPUs) and `k8s`
(one Kubernetes Job per run). Runs on a per-GPU pool only ever run from a per-GPU queue: its
deployment defaults to the first one (`gpu-0`, GPU 0) and its worker polls no other queue. Work pool base job
templates live in `infra/` and are rendered here with Prefect's own templating, so tests see what a worker will run.
"""

from __future__ import annotations

import json
import os
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.utilities.schema_tools import ValidationError, validate
from prefect.utilities.templating import apply_values
from prefect.workers.process import ProcessWorker

from dialsum.errors import ConfigError

NUM_GPUS_ENV = "DIALSUM_NUM_GPUS"
CHILD_FLOW = "train-model"

# Environment handed to training containers. The worker stores each value in a Prefect Secret block
# (see `secret_block_name`) that the Docker pool template references, so no value sits in a template.
PASSTHROUGH_ENV = (
    "DIALSUM_STORAGE_URL",
    "DIALSUM_S3_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
    "HF_TOKEN",
    "WANDB_API_KEY",
    "WANDB_PROJECT",
    "WANDB_MODE",
)


@dataclass(frozen=True)
class Pool:
    """A Prefect work pool: its name, worker type and base job template file in `infra/` (None: the type's default)."""

    name: str
    type: str
    template: str | None = None


@dataclass(frozen=True)
class Target:
    """Where a `train-model` run executes; `queue_prefix` set means one work queue per GPU."""

    name: str
    deployment: str
    pool: Pool
    queue_prefix: str | None
    gpu: bool


@dataclass(frozen=True)
class Placement:
    """One model's child run: the deployment to call and the queue and job variables to call it with."""

    model: str
    deployment: str
    work_queue_name: str | None
    job_variables: dict[str, Any] = field(default_factory=dict)


POOLS = {
    pool.name: pool
    for pool in (
        Pool("dialsum-process", "process"),
        Pool("dialsum-process-gpu", "process"),
        Pool("dialsum-control", "process"),
        Pool("dialsum-docker-gpu", "docker", "docker-gpu-pool.json"),
        Pool("dialsum-docker-cpu", "docker", "docker-cpu-pool.json"),
        Pool("dialsum-k8s", "kubernetes", "k8s-gpu-pool.json"),
    )
}

TARGETS = {
    target.name: target
    for target in (
        Target("process", f"{CHILD_FLOW}/process", POOLS["dialsum-process"], None, gpu=False),
        Target("process-gpu", f"{CHILD_FLOW}/process-gpu", POOLS["dialsum-process-gpu"], "gpu", gpu=True),
        Target("docker-gpu", f"{CHILD_FLOW}/docker-gpu", POOLS["dialsum-docker-gpu"], "gpu", gpu=True),
        Target("docker-cpu", f"{CHILD_FLOW}/docker-cpu", POOLS["dialsum-docker-cpu"], None, gpu=False),
        Target("k8s", f"{CHILD_FLOW}/k8s", POOLS["dialsum-k8s"], None, gpu=True),
    )
}


def get_target(name: str) -> Target:
    """The target called `name`, or a ConfigError listing the known ones."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown target {name!r}; choose one of {', '.join(sorted(TARGETS))}") from None


def resolve_num_gpus(num_gpus: int | None) -> int:
    """GPUs on the box: the argument, else `DIALSUM_NUM_GPUS`; missing or < 1 is an error, never 'no GPU'."""
    raw = num_gpus if num_gpus is not None else os.environ.get(NUM_GPUS_ENV)
    if raw is None or str(raw).strip() == "":
        raise ConfigError(f"a GPU target needs the GPU count: pass num_gpus or set {NUM_GPUS_ENV}")
    try:
        count = int(raw)
    except ValueError:
        raise ConfigError(f"{NUM_GPUS_ENV} must be a whole number, got {raw!r}") from None
    if count < 1:
        raise ConfigError(f"the GPU count must be at least 1, got {count}")
    return count


def queue_names(num_gpus: int | None, prefix: str = "gpu") -> list[str]:
    """The per-GPU work queues `gpu-0` … `gpu-{N-1}`."""
    return [f"{prefix}-{i}" for i in range(resolve_num_gpus(num_gpus))]


def gpu_job_variables(spec: Target, gpu_ids: list[str]) -> dict[str, Any]:
    """How a per-GPU target's run is pinned to its GPUs: a process run sees only them (`CUDA_VISIBLE_DEVICES`),
    a container gets them as device requests (`gpu_ids`)."""
    if spec.pool.type == "process":
        return {"env": {"CUDA_VISIBLE_DEVICES": ",".join(gpu_ids)}}
    return {"gpu_ids": list(gpu_ids)}


def default_placement(target: str) -> tuple[str | None, dict[str, Any]]:
    """Queue and job variables of a run started by hand on `target`'s deployment: GPU 0 on a per-GPU target."""
    spec = get_target(target)
    if spec.queue_prefix is None:
        return None, {}
    return f"{spec.queue_prefix}-0", gpu_job_variables(spec, ["0"])


def slots(model: str, target: str, parallel: int, num_gpus: int | None = None) -> dict[str, Placement]:
    """Where a sweep's or K-fold's children run, at most `parallel` at once: one slot per GPU queue (`gpu-<i>`, so
    a trial never shares a GPU) on per-GPU targets, else `parallel` interchangeable slots (`slot-<i>`)."""
    spec = get_target(target)
    if parallel < 1:
        raise ConfigError(f"parallel must be at least 1, got {parallel}")
    if spec.queue_prefix is None:
        job_variables = {"gpu_count": 1} if spec.gpu else {}
        return {f"slot-{i}": Placement(model, spec.deployment, None, dict(job_variables)) for i in range(parallel)}
    count = min(parallel, resolve_num_gpus(num_gpus))
    return {
        f"{spec.queue_prefix}-{i}": Placement(
            model, spec.deployment, f"{spec.queue_prefix}-{i}", gpu_job_variables(spec, [str(i)])
        )
        for i in range(count)
    }


def assign(models: list[str], target: str, num_gpus: int | None = None, gpus_per_model: int = 1) -> list[Placement]:
    """Place each model on `target`, with `gpus_per_model` GPUs each (data-parallel training above 1).

    On per-GPU targets the box's GPUs form groups of `gpus_per_model`; model i gets group `i % groups`, and
    the queue of the group's first GPU, so two runs never share a GPU. Other GPU targets get a GPU count.
    """
    spec = get_target(target)
    if gpus_per_model < 1 or (gpus_per_model > 1 and not spec.gpu):
        raise ConfigError(f"target {target} cannot give a model {gpus_per_model} GPUs")
    if spec.queue_prefix is None:
        job_variables = {"gpu_count": gpus_per_model} if spec.gpu else {}
        return [Placement(m, spec.deployment, None, dict(job_variables)) for m in models]
    count = resolve_num_gpus(num_gpus)
    if gpus_per_model > count:
        raise ConfigError(f"{gpus_per_model} GPUs per model, but the box has {count}")
    groups = count // gpus_per_model
    placed = []
    for i, m in enumerate(models):
        first = (i % groups) * gpus_per_model
        gpu_ids = [str(first + k) for k in range(gpus_per_model)]
        placed.append(Placement(m, spec.deployment, f"{spec.queue_prefix}-{first}", gpu_job_variables(spec, gpu_ids)))
    return placed


def assign_by_family(
    models: list[str],
    target: str,
    num_gpus: int | None = None,
    gpus_per_model: int = 1,
    overrides: list[str] | tuple[str, ...] = (),
    profiles: dict | None = None,
) -> list[Placement]:
    """`assign`, except that a model whose family needs no GPU (a chat model behind an API) runs without one: on
    `target` when it is a CPU target, else on the worker's own process (`process`), beside the GPU children.
    `profiles`: model -> its config as the run resolved it (None: it does not load), else each is resolved here."""
    gpu = [m for m in models if _needs_gpu(m, overrides, profiles)]
    cpu = [m for m in models if m not in gpu]
    placed = {p.model: p for p in assign(gpu, target, num_gpus, gpus_per_model)} if gpu else {}
    placed.update({p.model: p for p in assign(cpu, "process" if get_target(target).gpu else target)})
    return [placed[m] for m in models]


def _needs_gpu(model: str, overrides, profiles: dict | None = None) -> bool:
    """Whether the model's family needs a GPU; a profile that does not load is placed like a trained model, so that
    its own child fails with its error and the other models go on."""
    from dialsum.config import load_model_config
    from dialsum.errors import ConfigError
    from dialsum.models import families

    try:
        cfg = profiles[model] if profiles is not None and model in profiles else load_model_config(model, overrides)
    except ConfigError:
        return True
    return cfg is None or families.of(cfg).needs_gpu


def secret_block_name(env_name: str) -> str:
    """The Secret block holding a passthrough variable, e.g. AWS_DEFAULT_REGION -> env-aws-default-region."""
    return "env-" + env_name.lower().replace("_", "-")


def load_template(pool: Pool, infra_dir: Path | None = None) -> dict[str, Any]:
    """A pool's base job template: its JSON file in `infra_dir` (default ./infra), or the worker type's default."""
    if pool.template is None:
        return ProcessWorker.get_default_base_job_template()
    path = (infra_dir or Path("infra")) / pool.template
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"work pool template not found: {path}") from None


def template_defaults(template: dict[str, Any]) -> dict[str, Any]:
    """Variable defaults as a worker applies them (None defaults are left out)."""
    properties = template["variables"].get("properties", {})
    return {name: attrs["default"] for name, attrs in properties.items() if attrs.get("default") is not None}


def render_job_configuration(template: dict[str, Any], variables: dict[str, Any]) -> dict[str, Any]:
    """Render a pool's job configuration for a flow run with these job variables.

    Validates defaults plus `variables` against the pool's variables schema with required fields
    enforced, as the Prefect server does when it creates a flow run, then merges and templates them
    as `BaseJobConfiguration.from_template_and_values` does. Block and variable references
    (`{{ prefect.blocks.… }}`) are left for the worker to resolve.
    """
    defaults = template_defaults(template)
    values = {**defaults, **variables}
    try:
        validate(values, template["variables"], raise_on_error=True, allow_none_with_default=True)
    except ValidationError as exc:
        raise ConfigError(f"invalid job variables: {exc}") from None
    config = deepcopy(template["job_configuration"])
    if defaults.get("env"):
        base_env = config.get("env")
        config["env"] = {**base_env, **defaults["env"]} if isinstance(base_env, dict) else defaults["env"]
    if isinstance(config.get("env"), dict) and values.get("env"):
        config["env"] = {**config["env"], **values["env"]}
    return apply_values(config, values)
