"""Ctrl-C in a multi-model run (`make demo`'s mode), the run continued with --resume (its terminal output: each line
once, no third-party chatter), the children's log lines read back from the Prefect API, and a resume of the
finished run that changes nothing."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.settings import PREFECT_API_URL, temporary_settings
from support.prefect_server import flow_runs

MODELS = ["tiny-bart", "tiny-qwen3"]
OUR_PREFIX = re.compile(r"^(DEBUG|INFO|WARNING|ERROR) [\w.]+: ")


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "PREFECT_HOME"))}
    return (
        base
        | {
            "DIALSUM_OUTPUT_DIR": str(tmp_path / "outputs"),
            "DIALSUM_STORAGE_URL": str(tmp_path / "store"),
            "PREFECT_HOME": str(tmp_path / "prefect-cli"),
        }
        | extra
    )


def child_logs(api_url: str, run_id: str, model: str) -> list[str]:
    """The log messages of the train-model run of `model` in run `run_id`, read back through the API."""
    runs = [r for r in flow_runs(api_url) if (r.parameters.get("model"), r.parameters.get("run_id")) == (model, run_id)]
    assert len(runs) == 1, runs
    with temporary_settings(updates={PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[runs[0].id])))
    return [entry.message for entry in logs]


@pytest.mark.slow
def test_ctrl_c_stops_a_multi_model_run_and_the_same_run_id_continues(tmp_path: Path, prefect_api: str) -> None:
    train = [sys.executable, "-m", "dialsum.cli", "train", "--mode", "multi_model", "--models", *MODELS, "--debug"]
    run = f"m1-{uuid.uuid4().hex[:6]}"  # the session's Prefect server holds other tests' runs

    # Ctrl-C at a terminal: SIGINT to the whole process group, the temporary Prefect server included.
    log = tmp_path / "first.log"
    with open(log, "wb") as out:
        first = subprocess.Popen(
            [*train, "--run-id", run], env=env(tmp_path), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 300
    while "eval at step 1" not in log.read_text():
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGINT)
    sent = time.monotonic()
    try:
        first.wait(timeout=15)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    output = log.read_text()
    assert first.returncode == 130 and time.monotonic() - sent < 15, output[-3000:]
    after = output.split("eval at step 1", 1)[1]
    for noise in ("Traceback", "ConnectError", "Crash detected", f"published {run}/"):
        assert noise not in after, f"{noise!r} after Ctrl-C:\n{after}"
    stopped = re.search(
        r"^dialsum: (tiny-bart|tiny-qwen3): stopped (at step \d of 3|after training|while predicting)", after, re.M
    )
    assert stopped, after
    other = "tiny-qwen3" if stopped.group(1) == "tiny-bart" else "tiny-bart"
    assert re.search(rf"^dialsum: {other}: not started$", after, re.M), after
    assert after.rstrip().endswith(f"dialsum: stopped; continue with --resume {run}")

    # The same run id continues: the stopped model resumes, the other trains, the ensemble is built and promoted.
    # The terminal shows each line once, without third-party chatter; the children's lines are in the Prefect API.
    rerun = subprocess.run(
        [*train, "--resume", run, "--promote", "if-better"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env(tmp_path, PREFECT_API_URL=prefect_api, WANDB_MODE="offline", WANDB_DIR=str(tmp_path)),
    )
    shown = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, shown[-3000:]
    assert re.search(r"^tiny-bart +encoder_decoder +completed", rerun.stdout, re.M), rerun.stdout
    assert re.search(r"^tiny-qwen3 +causal_lm +completed", rerun.stdout, re.M), rerun.stdout
    assert "ensemble (" in rerun.stdout and "champion: promoted: no champion yet" in rerun.stdout
    lines = [line for line in shown.splitlines() if line.strip()]
    counts = collections.Counter(OUR_PREFIX.sub("", line).strip() for line in lines)
    assert [m for m, n in counts.items() if n > 1] == [], shown
    for noise in (
        "Loading weights",
        "Writing model shards",
        "wandb:",
        "kernels-community",
        "Finished in state",
        "Traceback",
    ):
        assert noise not in shown, noise
    messages = child_logs(prefect_api, run, stopped.group(1))
    assert any(m.startswith(f"resumed {stopped.group(1)} at step") for m in messages), messages
    assert any(f"{stopped.group(1)}: eval at step" in m for m in messages), messages
    assert any(m.startswith(f"published {run}/{stopped.group(1)}") for m in messages), messages

    # Resuming the finished run changes no byte: every model and the ensemble are already published.
    def tree() -> dict[str, bytes]:
        return {
            str(f): f.read_bytes()
            for d in ("outputs", "store")
            for f in sorted((tmp_path / d).rglob("*"))
            if f.is_file()
        }

    before = tree()
    again = subprocess.run(
        [*train, "--resume", run],
        env=env(tmp_path, PREFECT_API_URL=prefect_api),
        capture_output=True,
        text=True,
        timeout=600,
    )
    shown = again.stdout + again.stderr
    assert again.returncode == 0 and f"already complete: run {run}" in again.stdout, shown[-3000:]
    assert tree() == before
