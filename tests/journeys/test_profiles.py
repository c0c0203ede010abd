"""Each shipped real profile runs the whole user journey: real tokenizer, chat template and special tokens, the real
(NF4 QLoRA on the causal profiles) code path, on a stand-in checkpoint of the real architecture class and
vocabulary. The shipped YAML is used as it is, except `model` and step counts (`--set`).

In order, for kobart, llama-3.2-korean-3b and qwen3-4b:
1. train with checkpoints to S3, SIGKILL after the first one, `--resume` on a machine without local state, finish;
2. `dialsum predict --run` in a fresh process writes the training process's predictions, byte for byte (one new
   process predicts with the three run folders);
3. `artifacts get` the published run into an empty folder and predict from that copy: the same bytes;
4. `champion promote`, then `predict --run champion`: the same bytes, shaped like sample_submission.csv;
5. `--gpus 2` on gloo with `--eval-before` ends with the weights of one process with twice the batch.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dialsum.cli.main import main
from dialsum.settings import get_settings
from dialsum.storage import list_checkpoints, open_storage, read_manifest

pytestmark = pytest.mark.slow

PROFILES = ["kobart", "llama-3.2-korean-3b", "qwen3-4b"]
# Step counts: one epoch of two optimizer steps (so one evaluation), a checkpoint after each step, short summaries.
STEPS = ["training.epochs=1", "training.checkpoint_every=1", "generation.max_new_tokens=32"]
# Data parallel against one process with twice the batch. The kobart journey run is that process (its stand-in has
# no dropout). The causal profiles compare two more runs: dropout off (each rank draws its own masks), row
# batches (a per-GPU token budget cuts a global batch where twice the budget in one process may not), and fp32
# compute on the NF4 weights (bf16 rounds differently per batch shape, which flips AdamW's first steps on
# near-zero gradients).
EXACT = ["lora.dropout=0", "training.max_tokens_per_batch=null", "quantization.compute_dtype=float32"]
PARALLEL = {
    "kobart": (["training.batch_size=8"], None),
    "causal": ([*EXACT, "training.batch_size=4"], [*EXACT, "training.batch_size=8"]),
}
RUNS: dict[str, Path] = {}


def _sets(profile: str, standins, *extra: str) -> list[str]:
    return [arg for value in [f"model={standins(profile)}", *STEPS, *extra] for arg in ("--set", value)]


def _storage(bucket: str, profile: str) -> str:
    return f"s3://{bucket}/{profile}"


def _predictions(folder: Path) -> dict[str, bytes]:
    return {split: (folder / "predictions" / f"{split}.csv").read_bytes() for split in ("dev", "test")}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    files = sorted((run_dir / "model").glob("*.safetensors"))
    assert files, f"no weights in {run_dir / 'model'}"
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


@pytest.mark.parametrize("profile", PROFILES)
def test_train_kill_resume(profile, standins, journey_data, journey_bucket, fresh_env, tmp_path):
    run_id, storage_url = f"journey-{profile}", _storage(journey_bucket, profile)
    command = [
        sys.executable,
        "-m",
        "dialsum.cli",
        "train",
        "--models",
        profile,
        *_sets(profile, standins),
        "--data",
        str(journey_data),
        "--storage",
        storage_url,
        "--run-id",
        run_id,
    ]
    log = tmp_path / "train.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=fresh_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    store = open_storage(storage_url)
    deadline = time.monotonic() + 600
    while not list_checkpoints(run_id, profile, store):
        assert process.poll() is None, f"training ended before its first checkpoint:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no checkpoint in 600 s:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert read_manifest(run_id, profile, store) is None, "the killed run must not have finished"
    shutil.rmtree(get_settings().output_dir / run_id)  # resume on another machine: only storage remains

    assert (
        main(
            [
                "train",
                "--models",
                profile,
                *_sets(profile, standins),
                "--data",
                str(journey_data),
                "--storage",
                storage_url,
                "--resume",
                run_id,
            ]
        )
        == 0
    )
    run_dir = get_settings().output_dir / run_id / profile
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["resumed_at_step"], metrics["train_steps"]) == (1, 2)
    assert metrics["base"]["model"] == str(standins(profile)) and metrics["base"]["commit"] is None  # a local folder
    assert read_manifest(run_id, profile, store) is not None  # published to the S3 server
    RUNS[profile] = run_dir


def test_predict_run_in_a_fresh_process(journey_data, fresh_env, tmp_path):
    """One new process, which holds nothing of the training, runs `dialsum predict --run` on each profile's run
    folder (one process for all three: a Python start with torch costs seconds on a small CI machine)."""
    assert RUNS, "no journey run to predict with"
    jobs = {profile: [str(run_dir), str(tmp_path / profile)] for profile, run_dir in RUNS.items()}
    code = (
        "import json, sys; from dialsum.cli.main import main; jobs = json.loads(sys.argv[1]); codes = "
        "{p: main(['predict', '--run', r, '--data', sys.argv[2], '--out', o]) for p, (r, o) in jobs.items()}; "
        "print(json.dumps(codes))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(jobs), str(journey_data)],
        env=fresh_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    for profile, run_dir in RUNS.items():
        assert codes[profile] == 0, f"{profile}: {done.stderr[-3000:]}"
        assert _predictions(tmp_path / profile) == _predictions(run_dir), profile


@pytest.mark.parametrize("profile", PROFILES)
def test_fetch_and_predict(profile, journey_data, journey_bucket, tmp_path):
    fetched = tmp_path / "fetched"
    assert (
        main(
            [
                "artifacts",
                "get",
                f"journey-{profile}",
                profile,
                str(fetched),
                "--storage",
                _storage(journey_bucket, profile),
            ]
        )
        == 0
    )
    assert main(["predict", "--run", str(fetched), "--data", str(journey_data), "--out", str(tmp_path / "out")]) == 0
    assert _predictions(tmp_path / "out") == _predictions(RUNS[profile])


@pytest.mark.parametrize("profile", PROFILES)
def test_champion(profile, shared, journey_data, journey_bucket, tmp_path):
    storage_url = _storage(journey_bucket, profile)
    assert main(["champion", "promote", f"journey-{profile}/{profile}", "--storage", storage_url]) == 0
    assert (
        main(
            [
                "predict",
                "--run",
                "champion",
                "--data",
                str(journey_data),
                "--out",
                str(tmp_path),
                "--storage",
                storage_url,
            ]
        )
        == 0
    )
    assert _predictions(tmp_path) == _predictions(RUNS[profile])
    with open(shared / "competition" / "sample_submission.csv", encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh))
    with open(tmp_path / "predictions" / "test.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == header == ["", "fname", "summary"]
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(len(rows) - 1)]
    with open(journey_data / "test.csv", encoding="utf-8", newline="") as fh:
        assert [r[1] for r in rows[1:]] == [r["fname"] for r in csv.DictReader(fh)]


@pytest.mark.parametrize("profile", PROFILES)
def test_two_gpus_on_gloo(profile, standins, journey_data, tmp_path, monkeypatch):
    from dialsum.pipeline import run_model

    parallel, reference = PARALLEL["kobart" if profile == "kobart" else "causal"]
    scratch = tmp_path / "tmp"  # the temp folder of this process, the launcher and its ranks
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    # importing bitsandbytes makes torch's compile cache folder in the temp folder, unless one is set
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torchinductor"))
    assert (
        main(
            [
                "train",
                "--gpus",
                "2",
                "--eval-before",
                "--models",
                profile,
                *_sets(profile, standins, *parallel),
                "--data",
                str(journey_data),
                "--storage",
                str(tmp_path / "store"),
                "--run-id",
                f"journey-{profile}-gpus2",
            ]
        )
        == 0
    )
    assert not list(scratch.iterdir()), "the launch left files in the temp folder"
    run_dir = get_settings().output_dir / f"journey-{profile}-gpus2" / profile
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["dev_score_before"] is not None and metrics["train_steps"] == 2
    if reference is None:  # the journey's own run is the one process with twice the batch
        single = RUNS[profile]
    else:
        single = run_model(
            profile,
            run_id=f"journey-{profile}-one",
            data_dir=journey_data,
            publish=False,
            overrides=[f"model={standins(profile)}", *STEPS, *reference],
        ).run_dir
    ours, theirs = _weights(run_dir), _weights(single)
    assert ours.keys() == theirs.keys()
    assert any(not torch.equal(ours[k], theirs[k]) for k in ours), "identical to the bit: suspicious for two processes"
    for name, tensor in theirs.items():
        torch.testing.assert_close(ours[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
