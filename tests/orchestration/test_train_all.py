"""The train-all and train-model flows: the train-all logic with stand-in children, embedded runs, and a real
server with a process worker."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelled, Completed, Crashed, Failed
from support.prefect_server import artifacts, flow_runs, prefect
from support.processes import has_env, start_group, stop_group
from support.s3_server import CREDENTIALS, s3_client, start_moto

from dialsum.errors import ConfigError, DataError
from dialsum.orchestration import train_all as train_all_module
from dialsum.orchestration import train_model as train_model_module
from dialsum.orchestration.placement import POOLS
from dialsum.orchestration.train_all import (
    ModelsFailed,
    check_models,
    run_embedded,
    train_all,
)
from dialsum.orchestration.train_model import model_name, slug, train_model
from dialsum.orchestration.worker import setup_pool
from dialsum.pipeline.result import ModelRow
from dialsum.release.ensemble import BEST_SINGLE, EnsembleResult, PublishedEnsemble
from dialsum.release.ensemble import headline as ensemble_headline
from dialsum.settings import get_settings
from dialsum.state.stop import Preempted
from dialsum.storage import LocalStorage, list_runs, read_manifest

REPO = Path(__file__).resolve().parents[2]
TINY = ["tiny-bart", "tiny-llama", "tiny-qwen3"]


@pytest.fixture(autouse=True)
def stand_in_profiles(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Profiles m0, m1 and m2 (tiny-bart under other names) for the fan-out tests: placement reads each model's
    family from its profile."""
    configs = tmp_path_factory.getbasetemp() / "stand-in-configs"
    if not configs.is_dir():
        shutil.copytree(REPO / "configs", configs)
        for name in ("m0", "m1", "m2"):
            shutil.copy(configs / "models" / "tiny-bart.yaml", configs / "models" / f"{name}.yaml")
    monkeypatch.setenv("DIALSUM_CONFIG_DIR", str(configs))


@pytest.fixture
def local_prefect(prefect_api: str) -> Iterator[None]:
    """Flows in this process report to the session's Prefect server."""
    try:
        yield
    finally:
        APILogWorker.drain_all(timeout=5)


@pytest.fixture
def run_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Offline, untracked training with outputs in a temp folder; returns the folder."""
    for name, value in {
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DIALSUM_OUTPUT_DIR": str(tmp_path / "outputs"),
        "DIALSUM_CONFIG_DIR": str(REPO / "configs"),
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


# ---------------------------------------------------------------- helpers and train-all logic


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train-all-20250101-120000-ab12cd", "train-all-20250101-120000-ab12cd"),
        ("Train_All 2025.01.01/Run#1", "train-all-2025-01-01-run-1"),
        ("--ensemble--", "ensemble"),
        ("한국어", "run"),
    ],
)
def test_slug(text: str, expected: str) -> None:
    assert slug(text) == expected


def test_model_name_reads_the_config_and_falls_back_to_the_stem(tmp_path: Path) -> None:
    assert model_name("tiny-bart") == "tiny-bart"
    broken = tmp_path / "broken.yaml"
    broken.write_text("type: nope\n")
    assert model_name(str(broken)) == "broken"


def test_models_failed_names_the_models_and_keeps_the_summary() -> None:
    summary = {"rows": [{"model": "a"}, {"model": "b"}, {"model": "c"}]}
    exc = ModelsFailed({"b": "ConfigError: bad key"}, summary)
    assert str(exc) == "1 of 3 models failed: b (ConfigError: bad key)"
    assert exc.summary is summary


def test_models_are_listed_once() -> None:
    check_models(["a", "b"])
    with pytest.raises(ConfigError, match="at least one"):
        check_models([])
    with pytest.raises(ConfigError, match="more than once: a"):
        check_models(["a", "b", "a"])


def test_a_completed_run_read_back_from_storage_reports_its_held_out_score(tmp_path: Path) -> None:
    from dialsum.orchestration.train_all import published_ensemble
    from dialsum.storage import publish

    strategies = {
        BEST_SINGLE: {"selection": 40.0, "held_out": 41.0, "held_out_low": 38.0, "held_out_high": 44.0, "full": 40.5},
        "consensus": {
            "selection": 42.0,
            "held_out": 43.25,
            "held_out_low": 40.0,
            "held_out_high": 46.5,
            "vs_best_single": 2.25,
            "vs_best_single_low": 0.5,
            "vs_best_single_high": 4.0,
            "full": 42.6,
        },
    }
    result = EnsembleResult(
        "consensus",
        "m1",
        {},
        {"m1": 40.5},
        {},
        {},
        {BEST_SINGLE: 40.5, "consensus": 42.6},
        {},
        {"dev_scored": 24},
        strategies,
        {"selection": 12, "held_out": 12},
    )
    folder = tmp_path / "ensemble"
    folder.mkdir()
    (folder / "ensemble.json").write_text(json.dumps(result.summary()), encoding="utf-8")
    store = LocalStorage(tmp_path / "store")
    publish(folder, "r1", "ensemble", storage=store)
    summary = published_ensemble("r1", store)
    assert summary["headline"] == ensemble_headline(summary)
    assert "?" not in summary["headline"] and "no held-out rows" not in summary["headline"]
    assert summary["headline"].startswith("held-out score 43.25 (95% CI 40.00 to 46.50) on 12 dev rows")


class FailingPipeline:
    def __init__(self, error: Exception) -> None:
        self.error, self.calls = error, 0

    def run_model(self, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        raise self.error


@pytest.mark.parametrize(
    ("error", "runs"), [(ConfigError("bad key"), 1), (DataError("bad row"), 1), (OSError("disk"), 2)]
)
def test_config_and_data_errors_are_not_retried(
    local_prefect: None, monkeypatch: pytest.MonkeyPatch, error: Exception, runs: int
) -> None:
    pipeline = FailingPipeline(error)
    monkeypatch.setattr(train_model_module, "pipeline_module", lambda: pipeline)
    state = train_model.with_options(retry_delay_seconds=0)("m", "r-1", return_state=True)
    assert state.is_failed() and str(error) in state.message
    assert pipeline.calls == runs


class FakeChildren:
    """Stands in for the deployments: records each child launch and completes all but `failing`."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.launches: list[tuple[Any, dict]] = []
        self.ensembled: list[str] = []

    def run_on_worker(self, where, parameters: dict) -> tuple:
        self.launches.append((where, parameters))
        if where.model in self.failing:
            return Failed(message=f"{where.model} broke"), 1.0
        return Completed(), 2.0

    def published_row(self, run_id: str, model: str, store, seconds: float, overrides=None, name=None) -> ModelRow:
        return ModelRow(model, "completed", "causal_lm", dev_score=10.0, seconds=seconds, location=f"{run_id}/{model}")

    def publish_ensemble(
        self, run_id: str, store, models: list[str], data_dir, sources=None, attachments=None
    ) -> PublishedEnsemble:
        self.ensembled = models
        result = EnsembleResult(BEST_SINGLE, models[0], {}, {}, {}, {}, {BEST_SINGLE: 10.0}, {}, {})
        return PublishedEnsemble(result, "# report\n", f"{run_id}/ensemble")


@pytest.fixture
def fake_children(monkeypatch: pytest.MonkeyPatch) -> FakeChildren:
    fake = FakeChildren({"m2"})
    monkeypatch.setattr(train_model_module, "_run_on_worker", fake.run_on_worker)
    monkeypatch.setattr(train_model_module, "published_row", fake.published_row)
    monkeypatch.setattr(train_all_module.ensemble, "publish_ensemble", fake.publish_ensemble)
    return fake


def test_train_all_places_children_and_fails_after_the_ensemble(
    local_prefect: None, fake_children: FakeChildren, tmp_path: Path
) -> None:
    state = train_all(
        ["m0", "m1", "m2"], target="docker-gpu", num_gpus=2, run_id="r-1", storage_url=str(tmp_path), return_state=True
    )

    assert state.is_failed() and "1 of 3 models failed: m2 (Failed: m2 broke)" in state.message
    launches = {where.model: (where, params) for where, params in fake_children.launches}
    assert [launches[m][0].work_queue_name for m in ("m0", "m1", "m2")] == ["gpu-0", "gpu-1", "gpu-0"]
    assert launches["m1"][0].deployment == "train-model/docker-gpu"
    assert launches["m1"][0].job_variables == {"gpu_ids": ["1"]}
    assert launches["m1"][1] == {
        "model": "m1",
        "run_id": "r-1",
        "data_dir": None,
        "storage_url": str(tmp_path),
        "debug": False,
        "group": "r-1",
        "eval_before": False,
    }
    assert sorted(fake_children.ensembled) == ["m0", "m1"]
    summary = state.result(raise_on_failure=False).summary
    assert [r["status"] for r in summary["rows"]] == ["completed", "completed", "failed"]
    assert summary["ensemble"]["location"] == "r-1/ensemble"


def test_train_all_passes_overrides_to_every_child(
    local_prefect: None, fake_children: FakeChildren, tmp_path: Path
) -> None:
    train_all(
        ["m0", "m1"],
        target="process",
        run_id="r-3",
        storage_url=str(tmp_path),
        overrides=["training.learning_rate=1e-4"],
    )
    assert [params["overrides"] for _, params in fake_children.launches] == [["training.learning_rate=1e-4"]] * 2


def test_train_all_with_an_unwritable_report_folder_fails_before_launching(
    local_prefect: None, fake_children: FakeChildren, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("DIALSUM_OUTPUT_DIR", str(blocker / "outputs"))
    get_settings.cache_clear()
    try:
        state = train_all(["m0"], target="docker-cpu", run_id="r-2", storage_url=str(tmp_path), return_state=True)
    finally:
        get_settings.cache_clear()
    assert state.is_failed() and f"cannot write to the output folder {blocker / 'outputs'}" in state.message
    assert fake_children.launches == []


def test_train_all_relaunches_a_crashed_child_up_to_the_limit(
    local_prefect: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    outcomes = {"m0": [Crashed(message="killed"), Completed()], "m1": [Crashed(message="evicted")] * 5}
    launched: list[str] = []

    def run_on_worker(where, parameters: dict) -> tuple:
        launched.append(where.model)
        return outcomes[where.model].pop(0), 1.0

    fake = FakeChildren(set())
    monkeypatch.setattr(train_model_module, "_run_on_worker", run_on_worker)
    monkeypatch.setattr(train_model_module, "published_row", fake.published_row)
    monkeypatch.setattr(train_all_module.ensemble, "publish_ensemble", fake.publish_ensemble)
    state = train_all(["m0", "m1"], run_id="r-2", storage_url=str(tmp_path), crash_relaunches=2, return_state=True)

    assert sorted(launched) == ["m0", "m0", "m1", "m1", "m1"]  # m1: first launch and two relaunches
    assert state.is_failed() and "m1 (Crashed: evicted)" in state.message
    rows = {r["model"]: r for r in state.result(raise_on_failure=False).summary["rows"]}
    assert rows["m0"]["status"] == "completed" and rows["m0"]["seconds"] == 2.0
    assert fake.ensembled == ["m0"]


def test_a_preempted_child_ends_crashed(local_prefect: None, monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = FailingPipeline(Preempted("stopped by SIGTERM after step 7"))
    monkeypatch.setattr(train_model_module, "pipeline_module", lambda: pipeline)
    state = train_model.with_options(retry_delay_seconds=0)("m", "r-1", return_state=True)
    assert state.is_crashed() and "step 7" in state.message and pipeline.calls == 1


def test_run_embedded_returns_the_summary_when_models_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    summary = {"run_id": "r", "rows": [{"model": "a", "status": "failed"}], "ensemble": None}
    calls = []

    def failing_train_all(models: list[str], **options: Any) -> dict:
        calls.append(options)
        raise ModelsFailed({"a": "broke"}, summary)

    monkeypatch.setattr(train_all_module, "train_all", failing_train_all)
    monkeypatch.setattr(train_all_module.api, "start", lambda: None)
    assert run_embedded(["a"], data_dir=Path("/data"), debug=True) is summary
    assert calls == [{"embedded": True, "return_state": True, "data_dir": "/data", "debug": True}]


def test_a_run_stopped_by_ctrl_c_returns_its_summary_from_the_cancelled_state() -> None:
    summary = {"run_id": "r", "status": "stopped", "rows": [{"model": "a", "status": "stopped"}]}
    assert train_all_module.summary_of(Cancelled(message="stopped by Ctrl-C", data=summary)) is summary


def test_a_stop_before_any_model_saved_anything_gives_no_resume_hint(
    run_env: Path, capsys: pytest.CaptureFixture
) -> None:
    from dialsum.cli.train import print_stopped
    from dialsum.state.runs import state_dir

    rows = [ModelRow.stopped("tiny-bart", "not started")]
    store = LocalStorage(run_env / "store")
    summary = train_all_module.summary_of(train_all_module.stopped_summary("r9", rows, store))
    assert summary["resumable"] is False
    assert print_stopped(summary) == 130
    err = capsys.readouterr().err
    assert "--resume" not in err and "nothing to resume" in err
    (state_dir("r9", "tiny-bart") / "run.json").parent.mkdir(parents=True)
    (state_dir("r9", "tiny-bart") / "run.json").write_text("{}")
    summary = train_all_module.summary_of(train_all_module.stopped_summary("r9", rows, store))
    assert summary["resumable"] is True and print_stopped(summary) == 130
    assert "dialsum: stopped; continue with --resume r9" in capsys.readouterr().err


def test_a_resumed_run_reuses_nothing_from_other_runs(
    local_prefect: None, fake_children: FakeChildren, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reused = {"m0": ModelRow("m0", "unchanged", dev_score=1.0, seconds=0.0, source_run="older")}
    monkeypatch.setattr(train_all_module, "unchanged_models", lambda *args: reused)
    fresh = train_all(["m0", "m1"], target="docker-cpu", run_id="r-new", storage_url=str(tmp_path), return_state=True)
    assert fresh.is_completed() and [w.model for w, _ in fake_children.launches] == ["m1"]
    fake_children.launches.clear()
    resumed = train_all(
        ["m0", "m1"], target="docker-cpu", run_id="r-new", storage_url=str(tmp_path), resume=True, return_state=True
    )
    assert resumed.is_completed() and sorted(w.model for w, _ in fake_children.launches) == ["m0", "m1"]


# ---------------------------------------------------------------- embedded, with real training


@pytest.mark.slow
def test_a_broken_model_fails_alone(local_prefect: None, run_env: Path) -> None:
    broken = run_env / "broken.yaml"
    broken.write_text("type: encoder_decoder\nmodel: tiny-bart\nnot_a_field: 1\n", encoding="utf-8")
    store = run_env / "store"

    started = time.monotonic()
    state = train_all(
        ["tiny-bart", str(broken), "tiny-qwen3"],
        debug=True,
        storage_url=str(store),
        run_id="iso-1",
        embedded=True,
        return_state=True,
    )

    assert state.is_failed()
    assert "1 of 3 models failed: broken (" in state.message and "not_a_field" in state.message
    assert time.monotonic() - started < 120, "the broken config must not wait for a retry"
    published = {(r.run_id, r.model) for r in list_runs(LocalStorage(store))}
    assert published == {("iso-1", "tiny-bart"), ("iso-1", "tiny-qwen3"), ("iso-1", "ensemble")}
    assert not (store / "iso-1" / "broken").exists()
    ensemble = read_manifest("iso-1", "ensemble", LocalStorage(store))
    assert ensemble["extra"]["models"] == ["tiny-bart", "tiny-qwen3"]
    rows = {r["model"]: r for r in state.result(raise_on_failure=False).summary["rows"]}
    assert rows["broken"]["status"] == "failed" and rows["tiny-bart"]["status"] == "completed"


# ---------------------------------------------------------------- a real Prefect server and process worker


@pytest.fixture
def moto_endpoint() -> Iterator[str]:
    server = start_moto()
    try:
        yield server.endpoint
    finally:
        server.stop()


def create_pools(api_url: str) -> None:
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        for pool in POOLS.values():
            asyncio.run(setup_pool(pool, 1, REPO / "infra"))


def child_runs(api_url: str, model: str) -> list[Any]:
    """The train-model flow runs launched for `model` (a profile path of this test's own), oldest first."""
    return [r for r in flow_runs(api_url) if r.parameters.get("model") == model]


def run_logs(api_url: str, flow_run_id) -> list[str]:
    """The log messages of a flow run, read back through the API."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        return [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]


def kill_child_after_checkpoint(api_url: str, model: str, s3, bucket: str, prefix: str, parent) -> None:
    """SIGKILL the process of `model`'s child run once it has published a checkpoint (a node lost mid-training)."""
    deadline = time.monotonic() + 420
    while time.monotonic() < deadline and parent.poll() is None:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        if any(o["Key"].endswith("/manifest.json") for o in listed):
            running = [r for r in child_runs(api_url, model) if r.state and r.state.is_running()]
            marker = f"PREFECT__FLOW_RUN_ID={running[0].id}".encode() if running else None
            pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and marker and has_env(p, marker)]
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            if pids:
                return
        time.sleep(0.2)
    raise AssertionError(f"{model} published no checkpoint while its parent ran")


@pytest.mark.slow
def test_train_all_on_a_prefect_server_with_a_process_worker(
    prefect_server: tuple[str, dict[str, str]], moto_endpoint: str, tmp_path: Path
) -> None:
    """Two tiny models; one child is SIGKILLed after its first checkpoint, relaunched, and resumes."""
    from support.profiles import long_profile

    api_url, env = prefect_server
    bucket, run_id = f"e2e-{uuid.uuid4().hex[:8]}", f"e2e-{uuid.uuid4().hex[:6]}"
    long = str(long_profile(tmp_path, steps=30))
    models = [long, "tiny-qwen3"]
    s3_client(moto_endpoint).create_bucket(Bucket=bucket)
    create_pools(api_url)
    prefect("--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml", env=env, timeout=180)
    worker_env = (
        env
        | CREDENTIALS
        | {
            "DIALSUM_S3_ENDPOINT_URL": moto_endpoint,
            "DIALSUM_CONFIG_DIR": str(REPO / "configs"),
            "DIALSUM_OUTPUT_DIR": str(tmp_path / "outputs"),
            "WANDB_MODE": "disabled",
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
    )
    worker = start_group(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", "dialsum-process", "--type", "process"],
        worker_env,
        tmp_path / "worker.log",
    )
    try:
        params = {"models": models, "debug": True, "storage_url": f"s3://{bucket}/dialsum", "run_id": run_id}
        parent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "deployment",
                "run",
                "train-all/local",
                "--params",
                json.dumps(params),
                "--watch",
                "--watch-timeout",
                "540",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        kill_child_after_checkpoint(
            api_url, long, s3_client(moto_endpoint), bucket, f"dialsum/{run_id}/long-bart/checkpoints/", parent
        )
        output, _ = parent.communicate(timeout=600)
        assert parent.returncode == 0, f"train-all failed:\n{output[-4000:]}"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nworker log:\n{(tmp_path / 'worker.log').read_text()[-6000:]}") from None
    finally:
        stop_group(worker)

    attempts = child_runs(api_url, long)
    assert [r.state.type.value for r in attempts] == ["CRASHED", "COMPLETED"]
    metrics = json.loads(
        s3_client(moto_endpoint)
        .get_object(Bucket=bucket, Key=f"dialsum/{run_id}/long-bart/metrics.json")["Body"]
        .read()
    )
    assert 0 < metrics["resumed_at_step"] < 30 and metrics["train_steps"] == 30
    relaunched = run_logs(api_url, attempts[-1].id)  # our lines reach the UI from a worker's flow-run process
    assert any(m.startswith("resumed long-bart at step") for m in relaunched), relaunched
    assert any(m.startswith("long-bart: eval at step") for m in relaunched), relaunched

    keys = {o["Key"] for o in s3_client(moto_endpoint).list_objects_v2(Bucket=bucket)["Contents"]}
    names = ["long-bart", "tiny-qwen3"]
    for model in [*names, "ensemble"]:
        assert f"dialsum/{run_id}/{model}/manifest.json" in keys, model
    ensembled = json.loads(
        s3_client(moto_endpoint)
        .get_object(Bucket=bucket, Key=f"dialsum/{run_id}/ensemble/manifest.json")["Body"]
        .read()
    )
    assert sorted(ensembled["extra"]["models"]) == names
    found = artifacts(api_url, [slug(f"train-all-{run_id}"), slug(f"ensemble-{run_id}")])
    table = json.loads(found[slug(f"train-all-{run_id}")].data)
    assert sorted(row["model"] for row in table) == names
    assert {row["status"] for row in table} == {"completed"}
    assert all(row["location"].startswith(f"s3://{bucket}/dialsum/{run_id}/") for row in table)
    assert slug(f"ensemble-{run_id}") in found
