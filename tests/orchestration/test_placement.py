"""Where each child runs (`orchestration.placement`): targets, per-GPU queues and GPU counts."""

from __future__ import annotations

import pytest

from dialsum.errors import ConfigError
from dialsum.orchestration import placement
from dialsum.orchestration.placement import POOLS, assign, queue_names
from dialsum.orchestration.worker import gpu_queue_prefix

DOCKER_POOL = POOLS["dialsum-docker-gpu"]


def test_assign_round_robins_over_gpu_queues() -> None:
    placed = assign(["a", "b", "c", "d", "e"], "docker-gpu", num_gpus=2)
    assert [p.work_queue_name for p in placed] == ["gpu-0", "gpu-1", "gpu-0", "gpu-1", "gpu-0"]
    assert [p.job_variables for p in placed] == [{"gpu_ids": [str(i % 2)]} for i in range(5)]
    assert {p.deployment for p in placed} == {"train-model/docker-gpu"}
    assert [p.model for p in placed] == ["a", "b", "c", "d", "e"]


def test_assign_reads_gpu_count_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(placement.NUM_GPUS_ENV, "3")
    assert [p.work_queue_name for p in assign(["a", "b", "c", "d"], "docker-gpu")] == [
        "gpu-0",
        "gpu-1",
        "gpu-2",
        "gpu-0",
    ]


@pytest.mark.parametrize("env_value", [None, "", "0", "two"])
def test_gpu_target_without_gpu_count_is_an_error(monkeypatch: pytest.MonkeyPatch, env_value: str | None) -> None:
    if env_value is None:
        monkeypatch.delenv(placement.NUM_GPUS_ENV, raising=False)
    else:
        monkeypatch.setenv(placement.NUM_GPUS_ENV, env_value)
    with pytest.raises(ConfigError):
        assign(["kobart"], "docker-gpu")


def test_non_queue_targets() -> None:
    (process,) = assign(["kobart"], "process")
    assert (process.deployment, process.work_queue_name, process.job_variables) == ("train-model/process", None, {})
    (k8s,) = assign(["kobart"], "k8s")
    assert (k8s.deployment, k8s.work_queue_name, k8s.job_variables) == ("train-model/k8s", None, {"gpu_count": 1})


def test_unknown_target_is_an_error() -> None:
    with pytest.raises(ConfigError, match="docker-gpu"):
        assign(["kobart"], "gpu")


def test_queue_names() -> None:
    assert queue_names(3) == ["gpu-0", "gpu-1", "gpu-2"]
    assert gpu_queue_prefix(DOCKER_POOL) == "gpu"
    assert gpu_queue_prefix(POOLS["dialsum-process"]) is None


def test_sweep_slots_are_one_gpu_queue_each_or_interchangeable() -> None:
    from dialsum.orchestration.placement import slots

    gpu = slots("m", "docker-gpu", parallel=4, num_gpus=2)
    assert {name: (p.work_queue_name, p.job_variables) for name, p in gpu.items()} == {
        "gpu-0": ("gpu-0", {"gpu_ids": ["0"]}),
        "gpu-1": ("gpu-1", {"gpu_ids": ["1"]}),
    }
    process = slots("m", "process-gpu", parallel=2, num_gpus=4)
    assert [p.job_variables for p in process.values()] == [
        {"env": {"CUDA_VISIBLE_DEVICES": "0"}},
        {"env": {"CUDA_VISIBLE_DEVICES": "1"}},
    ]
    assert process["gpu-1"].deployment == "train-model/process-gpu"
    plain = slots("m", "process", parallel=3)
    assert list(plain) == ["slot-0", "slot-1", "slot-2"] and all(p.work_queue_name is None for p in plain.values())
    assert slots("m", "k8s", parallel=1)["slot-0"].job_variables == {"gpu_count": 1}
    with pytest.raises(ConfigError, match="parallel"):
        slots("m", "process", parallel=0)
