"""Sweeps on a real Prefect server: a process worker serving two per-GPU queues (standing in for two GPUs), tiny
trials, the parent as `dialsum sweep --target process-gpu`. One server and worker for the module; the kill tests
reuse them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.settings import PREFECT_API_URL, temporary_settings
from support.prefect_server import (
    PrefectServer,
    artifacts,
    base_env,
    delete_runs,
    unfinished_runs,
)
from support.processes import has_env, start_group, stop_group

from dialsum.config import load_model_config, overlay_overrides
from dialsum.orchestration.placement import POOLS
from dialsum.orchestration.worker import setup_pool
from dialsum.storage import LocalStorage, read_manifest
from dialsum.tuning.space import read_space
from dialsum.tuning.study import StudyJournal

REPO = Path(__file__).resolve().parents[2]
POOL = POOLS["dialsum-process-gpu"]
SPACE = {
    "objective": "dev_score",
    "params": {
        "training.learning_rate": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
        "training.warmup_steps": {"low": 0.0, "high": 0.2},
    },
    "pruner": {"type": "none"},
}

pytestmark = pytest.mark.slow


def trial_profile(folder: Path) -> Path:
    """tiny-bart cut to two optimizer steps on eight rows, a dev loss at each step and a short greedy decode."""
    base = (REPO / "configs" / "models" / "tiny-bart.yaml").read_text(encoding="utf-8").split("\ntraining:")[0]
    path = folder / "sweep-bart.yaml"
    path.write_text(
        base + "\ntraining: {epochs: 1, batch_size: 4, length_group_batches: 2, debug_rows: 8, "
        "debug_steps: 2, eval_every: 1, eval_score_rows: 4, checkpoint_every: null}\n"
        "generation: {batch_size: 8, max_new_tokens: 24, num_beams: 1}\n",
        encoding="utf-8",
    )
    return path


def deploy_train_model(api_url: str, name: str) -> None:
    """Create the `train-model/<name>` deployment of infra/prefect.yaml through the API, as `prefect deploy` would
    (without its second import of the flows: the suite's time)."""
    from prefect.utilities.callables import parameter_schema

    from dialsum.orchestration.train_model import train_model

    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text(encoding="utf-8"))
    (deployment,) = [
        d for d in spec["deployments"] if d["name"] == name and d["entrypoint"] == "flows/train_model.py:train_model"
    ]
    pool = deployment["work_pool"]
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        client.create_deployment(
            flow_id=client.create_flow_from_name("train-model"),
            name=name,
            entrypoint=deployment["entrypoint"],
            work_pool_name=pool["name"],
            work_queue_name=pool.get("work_queue_name"),
            job_variables=pool.get("job_variables"),
            tags=deployment.get("tags"),
            path=str(REPO),
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}],
            parameter_openapi_schema=parameter_schema(train_model).model_dump_for_openapi(),
        )


@dataclass
class Setup:
    api_url: str
    env: dict[str, str]
    folder: Path
    profile: Path
    space: Path
    store: Path

    def sweep(self, study: str, trials: int, parent: str, space: bool = True) -> subprocess.Popen:
        """`dialsum sweep` as its own process (its own output folder: a parent on another machine)."""
        command = [
            sys.executable,
            "-m",
            "dialsum.cli",
            "sweep",
            "--models",
            str(self.profile),
            "--trials",
            str(trials),
            "--parallel",
            "2",
            "--gpus",
            "2",
            "--target",
            "process-gpu",
            "--study",
            study,
            "--debug",
            "--storage",
            str(self.store),
            "--poll-seconds",
            "1",
        ]
        command += ["--space", str(self.space)] if space else []
        env = self.env | {"DIALSUM_OUTPUT_DIR": str(self.folder / parent)}
        log = open(self.folder / f"{study}-{parent}.log", "ab")
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(self, name: str) -> str:
        path = self.folder / name
        return path.read_text(errors="replace")[-6000:] if path.is_file() else ""

    def runs(self, study: str) -> list[Any]:
        """The train-model flow runs of a study in this module's storage, oldest first."""
        with temporary_settings(updates={PREFECT_API_URL: self.api_url}), get_client(sync_client=True) as client:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"sweep:{study}"])))
        return sorted((r for r in runs if r.parameters.get("storage_url") == str(self.store)), key=lambda r: r.created)

    def study(self, name: str) -> Any:
        """The study as its storage snapshot holds it, opened from a fresh local copy."""
        journal = StudyJournal(name, LocalStorage(self.store), self.folder / "reader" / f"{name}-{time.monotonic_ns()}")
        assert journal.restore()
        return journal.open(journal.check_space(None), seed=0)


@pytest.fixture(scope="module")
def setup(prefect_session_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """The session's Prefect server and a worker of this module's own on the process-gpu pool; the runs the module
    leaves unfinished are deleted when it ends."""
    folder = tmp_path_factory.mktemp("sweep-server")
    api_url = prefect_session_server.api_url
    before = unfinished_runs(api_url)
    env = base_env(folder / "prefect-home") | {"PREFECT_API_URL": api_url}
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        asyncio.run(setup_pool(POOL, 2, REPO / "infra"))
    deploy_train_model(api_url, "process-gpu")
    run_env = env | {
        "DIALSUM_CONFIG_DIR": str(REPO / "configs"),
        "WANDB_MODE": "disabled",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "DIALSUM_CACHE_DIR": str(folder / "cache"),
        "OMP_NUM_THREADS": "1",
    }  # two children share the two cores
    worker = start_group(
        [
            sys.executable,
            "-m",
            "prefect",
            "worker",
            "start",
            "--pool",
            POOL.name,
            "--type",
            "process",
            "--work-queue",
            "gpu-0",
            "--work-queue",
            "gpu-1",
        ],
        run_env | {"PREFECT_WORKER_QUERY_SECONDS": "1", "DIALSUM_OUTPUT_DIR": str(folder / "worker")},
        folder / "worker.log",
    )
    try:
        space = folder / "space.yaml"
        space.write_text(yaml.safe_dump(SPACE), encoding="utf-8")
        yield Setup(api_url, run_env, folder, trial_profile(folder), space, folder / "store")
    finally:
        stop_group(worker)
        delete_runs(api_url, unfinished_runs(api_url) - before)


def wait_for(predicate, timeout: float, what: str, parent: subprocess.Popen | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        if parent is not None and parent.poll() is not None:
            raise AssertionError(f"the parent exited ({parent.returncode}) before {what}")
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def peak_overlap(runs: list[Any]) -> int:
    """Most child runs running at the same moment (from their start and end times)."""
    events = []
    for run in runs:
        if run.start_time is not None:
            events += [(run.start_time, 1), (run.end_time or run.start_time, -1)]
    peak = current = 0
    for _, change in sorted(events, key=lambda e: (e[0], e[1])):
        current += change
        peak = max(peak, current)
    return peak


def finish(setup: Setup, parent: subprocess.Popen, name: str, timeout: float = 300) -> None:
    try:
        code = parent.wait(timeout)
    except subprocess.TimeoutExpired:
        parent.kill()
        code = None
    assert code == 0, f"sweep exited with {code}:\n{setup.log(name)}\nworker:\n{setup.log('worker.log')}"


def child_pids(setup: Setup, study: str, name: str) -> list[int] | None:
    """The processes of a running child run (found by the flow-run id in their environment)."""
    runs = [r for r in setup.runs(study) if r.name == name and r.state and r.state.is_running()]
    if not runs:
        return None
    marker = f"PREFECT__FLOW_RUN_ID={runs[0].id}".encode()
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and has_env(p, marker)] or None


def test_a_sweep_survives_kill_9_of_a_child_and_of_its_parent(setup: Setup) -> None:
    """6 trials, 2 at once, on two GPU queues. The child of trial 0 is SIGKILLed while it trains; later the parent
    is SIGKILLed with trials done and trials running, and a parent with another output folder (another machine)
    continues from the storage snapshot. One sweep shows all three, to keep the suite's time."""
    first = setup.sweep("s6", 6, "parent-a")
    try:
        for pid in wait_for(lambda: child_pids(setup, "s6", "s6-t0000"), 180, "trial 0 running", first):
            os.kill(pid, signal.SIGKILL)

        def completed_in_snapshot() -> int:
            try:
                return sum(t.state.name == "COMPLETE" for t in setup.study("s6").trials)
            except AssertionError:  # no snapshot yet
                return 0

        def ready() -> bool:  # the parent records a result after its child run ends: ask its snapshot
            states = [r.state.type.value for r in setup.runs("s6") if r.state]
            return states.count("RUNNING") >= 1 and completed_in_snapshot() >= 2

        wait_for(ready, 240, "two completed trials and one running", first)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    before = {t.number: t.value for t in setup.study("s6").trials if t.state.name == "COMPLETE"}
    running_at_kill = [r.name for r in setup.runs("s6") if r.state and not r.state.is_final()]
    assert len(before) >= 2 and running_at_kill

    second = setup.sweep("s6", 6, "parent-b", space=False)
    finish(setup, second, "s6-parent-b.log")

    study = setup.study("s6")
    trials = {t.number: t for t in study.trials}
    runs = setup.runs("s6")
    names = [r.name for r in runs]
    # exactly 6 trials, 0 duplicates (one child run per trial), never more than 2 at once
    assert len(trials) == 6
    assert sorted(names) == [f"s6-t{n:04d}" for n in range(6)]
    assert peak_overlap(runs) == 2
    assert all(t.user_attrs["slot"] in ("gpu-0", "gpu-1") for t in trials.values())
    # the killed child: a failed trial, its parameters queued once more and completed; the sweep completed
    assert trials[0].state.name == "FAIL" and "Crashed" in trials[0].user_attrs["error"]
    (again,) = [t for t in trials.values() if t.user_attrs.get("requeued_from") == 0]
    assert again.params == trials[0].params and again.state.name == "COMPLETE"
    assert sorted(t.state.name for t in trials.values()) == ["COMPLETE"] * 5 + ["FAIL"]
    # the killed parent: 0 completed trials lost, the running ones adopted, no parameter set proposed twice
    assert {n: trials[n].value for n in before} == before
    assert set(running_at_kill) <= set(names)
    proposed = [tuple(sorted(t.params.items())) for t in trials.values() if "requeued_from" not in t.user_attrs]
    assert len(set(proposed)) == len(proposed) == 5
    for t in trials.values():
        if t.state.name == "COMPLETE":
            assert read_manifest(t.user_attrs["run_id"], "sweep-bart", LocalStorage(setup.store)) is not None

    folder = setup.store / "sweeps" / "s6"
    assert {"journal.log", "space.yaml", "trials.csv", "best.yaml", "history.png", "importance.png"} <= {
        p.name for p in folder.iterdir()
    }
    table = (folder / "trials.csv").read_text()
    assert len(table.strip().splitlines()) == 1 + 6 and "Crashed" in table
    overlay = overlay_overrides(folder / "best.yaml")
    best = study.best_trial.params["training.learning_rate"]
    assert load_model_config(str(setup.profile), overlay).training.learning_rate == best
    assert read_space(folder / "space.yaml")[0].params.keys() == SPACE["params"].keys()
    assert "sweep-s6" in artifacts(setup.api_url, ["sweep-s6"])
    print((setup.folder / "s6-parent-b.log").read_text().split("sweep s6:")[-1][-3000:])


def small_data(folder: Path) -> Path:
    """12 train, 4 dev and 4 test rows of the bundled sample."""
    import csv

    from dialsum.data import sample_dir

    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 12), ("dev", 4), ("test", 4)):
        rows = list(csv.DictReader(open(sample_dir() / f"{split}.csv", encoding="utf-8")))[:n]
        with open(folder / f"{split}.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return folder


def test_kfold_over_two_gpu_queues_predicts_every_train_row_out_of_fold(setup: Setup) -> None:
    import csv
    import json

    from dialsum.tuning.folds import assign

    data = small_data(setup.folder / "kfold-data")
    profile = setup.folder / "kfold-bart.yaml"  # not a debug run: every held-out row is predicted
    profile.write_text(
        setup.profile.read_text().replace("debug_rows: 8, debug_steps: 2, eval_every: 1", "eval_every: null")
    )
    command = [
        sys.executable,
        "-m",
        "dialsum.cli",
        "kfold",
        "--models",
        str(profile),
        "--k",
        "2",
        "--gpus",
        "2",
        "--target",
        "process-gpu",
        "--data",
        str(data),
        "--storage",
        str(setup.store),
        "--run-id",
        "kf2",
        "--poll-seconds",
        "1",
    ]
    done = subprocess.run(
        command,
        cwd=REPO,
        env=setup.env | {"DIALSUM_OUTPUT_DIR": str(setup.folder / "kfold")},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    folder = setup.store / "kfold" / "kf2"
    assert (folder / "folds.json").read_text() == assign(data / "train.csv", 2, 0).to_json()
    folds = json.loads((folder / "folds.json").read_text())["folds"]
    oof = list(csv.DictReader(open(folder / "oof.csv", encoding="utf-8")))
    train = [r["fname"] for r in csv.DictReader(open(data / "train.csv", encoding="utf-8"))]
    assert [r["fname"] for r in oof] == train and all(int(r["fold"]) == folds[r["fname"]] for r in oof)
    summary = json.loads((folder / "kfold.json").read_text())
    assert summary["oof_rows"] == summary["train_rows"] == 12 and summary["oof_interval"] is not None
    assert [f["oof_rows"] for f in summary["folds"]] == [6, 6] and all(
        f["dev_score"] is not None for f in summary["folds"]
    )
    assert summary["ensemble"]["test_rows"] == 4 and summary["ensemble"]["full_dev_score"] is not None
    assert summary["ensemble"]["held_out_score"] is not None and summary["ensemble"]["split"]["held_out_rows"]
    test = list(csv.DictReader(open(folder / "predictions" / "test.csv", encoding="utf-8")))
    assert [r["fname"] for r in test] == [r["fname"] for r in csv.DictReader(open(data / "test.csv", encoding="utf-8"))]
    assert "pooled OOF score" in done.stdout


def test_a_study_name_or_kfold_run_id_reused_in_another_storage_is_another_run(setup: Setup) -> None:
    """The same study name and the same K-fold run id in storage A, then in storage B (same machine, same output
    folder) and, at the same time, the same study in storage C from another output folder; one Prefect server. The
    sweeps run embedded (local child processes), the K-fold runs on the process-gpu deployment. No run adopts
    another storage's children: each completes its whole budget with children of its own, each storage holds only
    its own results, and A's runs and files are left as they were."""
    data = small_data(setup.folder / "scoped-data")
    profile = setup.folder / "kfold-bart.yaml"
    profile.write_text(
        setup.profile.read_text().replace("debug_rows: 8, debug_steps: 2, eval_every: 1", "eval_every: null")
    )
    stores = {name: setup.folder / f"scoped-{name}" for name in "abc"}

    def start(name: str, what: str, parent: str = "scoped-parent") -> subprocess.Popen:
        store = ["--storage", str(stores[name]), "--poll-seconds", "1"]
        command = {
            "sweep": [
                "sweep",
                "--models",
                str(setup.profile),
                "--space",
                str(setup.space),
                "--trials",
                "1",
                "--study",
                "same",
                "--debug",
                *store,
            ],
            "kfold": [
                "kfold",
                "--models",
                str(profile),
                "--k",
                "2",
                "--gpus",
                "2",
                "--target",
                "process-gpu",
                "--data",
                str(data),
                "--run-id",
                "kfsame",
                *store,
            ],
        }[what]
        log = open(setup.folder / f"scoped-{name}-{what}.log", "ab")
        env = setup.env | {"DIALSUM_OUTPUT_DIR": str(setup.folder / parent)}
        return subprocess.Popen(
            [sys.executable, "-m", "dialsum.cli", *command], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env
        )

    def children(name: str) -> list[Any]:
        with temporary_settings(updates={PREFECT_API_URL: setup.api_url}), get_client(sync_client=True) as client:
            tags = FlowRunFilterTags(any_=["sweep:same", "kfold:kfsame"])
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=tags))
        return sorted(
            (r.name, r.state.type.value) for r in runs if r.parameters.get("storage_url") == str(stores[name])
        )

    def files(store: Path) -> dict[str, int]:
        return {str(p.relative_to(store)): p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}

    for parents in ([("a", "sweep"), ("a", "kfold")], [("b", "sweep"), ("b", "kfold"), ("c", "sweep")]):
        started = {
            (name, what): start(name, what, "scoped-parent-c" if name == "c" else "scoped-parent")
            for name, what in parents
        }
        try:
            for (name, what), parent in started.items():
                finish(setup, parent, f"scoped-{name}-{what}.log", timeout=500)
        finally:
            for parent in started.values():
                if parent.poll() is None:
                    parent.kill()
                    parent.wait()
        if parents[0][0] == "a":
            kept, kept_children = files(stores["a"]), children("a")

    assert files(stores["a"]) == kept and children("a") == kept_children
    for name, store in stores.items():
        folds = [] if name == "c" else [("kfsame-f0-a0", "COMPLETED"), ("kfsame-f1-a0", "COMPLETED")]
        assert children(name) == [*folds, ("same-t0000", "COMPLETED")]
        journal = StudyJournal("same", LocalStorage(store), setup.folder / "reader" / f"same-{time.monotonic_ns()}")
        assert journal.restore()
        (trial,) = journal.open(journal.check_space(None), seed=0).trials
        assert trial.state.name == "COMPLETE" and trial.user_attrs["location"].startswith(str(store))
        assert read_manifest("same-t0000", "sweep-bart", LocalStorage(store)) is not None
        if folds:
            summary = json.loads((store / "kfold" / "kfsame" / "kfold.json").read_text())
            assert summary["oof_rows"] == summary["train_rows"] == 12
            assert all(read_manifest(f"kfsame-f{i}", "kfold-bart", LocalStorage(store)) for i in (0, 1))
