"""Checkpoints and resume: a killed run continues where it stopped and ends with an uninterrupted run's weights;
finished phases survive a later failure; SIGTERM checkpoints, publishes and exits within the grace period."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.profiles import ROOT, STEPS, long_profile
from support.s3_server import CREDENTIALS

from dialsum.config import load_model_config
from dialsum.data import load_splits, placeholders_in
from dialsum.engine import checkpoint
from dialsum.engine.checkpoint import Checkpointer
from dialsum.engine.trainer import fit
from dialsum.errors import DialsumError
from dialsum.models import checkpoint_source, family
from dialsum.pipeline import phases, run_model
from dialsum.settings import get_settings
from dialsum.state.phases import Phases
from dialsum.storage import LocalStorage, list_checkpoints, list_runs


def train_process(config: Path, run_id: str, env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dialsum.cli",
                "train",
                "--models",
                str(config),
                "--debug",
                *extra,
                *(["--run-id", run_id] if "--resume" not in extra else []),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_checkpoint(folder: Path, process: subprocess.Popen, log: Path, timeout: float = 300) -> Path:
    """The first checkpoint, once published: the next one is only written after the first's publish returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(found := checkpoint.local_checkpoints(folder)) >= 2:
            return found[0]
        if process.poll() is not None:
            raise AssertionError(f"training ended before a checkpoint:\n{log.read_text()[-3000:]}")
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint within {timeout} s:\n{log.read_text()[-3000:]}")


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict[str, torch.Tensor], dict]:
    """The reference: the same profile trained in one go (in this process)."""
    folder = tmp_path_factory.mktemp("reference")
    result = run_model(str(long_profile(folder)), run_id="reference", debug=True, publish=False)
    return final_weights(result.run_dir), result.metrics


def env_for(tmp_path: Path, storage_url: str, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALSUM_")}
    return (
        env
        | {
            "DIALSUM_CONFIG_DIR": str(ROOT / "configs"),
            "DIALSUM_CACHE_DIR": os.environ["DIALSUM_CACHE_DIR"],
            "DIALSUM_OUTPUT_DIR": str(tmp_path / "out"),
            "DIALSUM_STORAGE_URL": storage_url,
            "WANDB_MODE": "disabled",
            "HF_HUB_OFFLINE": "1",
        }
        | more
    )


@pytest.mark.slow
@pytest.mark.parametrize("where", ["local", "s3"])
def test_killed_run_resumes_to_the_uninterrupted_weights(where, uninterrupted, tmp_path, request):
    if where == "s3":
        server, bucket = request.getfixturevalue("moto_server"), request.getfixturevalue("s3_bucket")
        env = env_for(tmp_path, f"s3://{bucket}/ckpt", DIALSUM_S3_ENDPOINT_URL=server.endpoint, **CREDENTIALS)
    else:
        env = env_for(tmp_path, str(tmp_path / "store"))
    config, log = long_profile(tmp_path), tmp_path / "train.log"
    state = tmp_path / "out" / "killed" / ".long-bart.state"

    process = train_process(config, "killed", env, log)
    first = wait_for_checkpoint(state / "checkpoints", process, log)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = max(int(p.name[5:]) for p in checkpoint.local_checkpoints(state / "checkpoints"))
    assert int(first.name[5:]) <= killed_at < STEPS, "the kill must land mid-training"
    if where == "s3":
        shutil.rmtree(tmp_path / "out")  # another machine: only what was published remains

    resumed = subprocess.run(
        [sys.executable, "-m", "dialsum.cli", "-v", "train", "--models", str(config), "--debug", "--resume", "killed"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_at = int(resumed.stderr.split("resumed long-bart at step ")[1].split()[0])
    assert int(first.name[5:]) <= resumed_at <= killed_at
    saved_after = sorted(
        {
            int(line.split("step-")[1][:8])
            for line in resumed.stderr.splitlines()
            if "checkpoint step-" in line and " saved" in line
        }
    )
    assert saved_after and min(saved_after) > resumed_at and max(saved_after) == STEPS

    run_dir = tmp_path / "out" / "killed" / "long-bart"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_steps"] == STEPS and metrics["resumed_at_step"] == resumed_at
    reference, _ = uninterrupted
    weights = final_weights(run_dir)
    assert weights.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-6, atol=1e-7, msg=name)


class Killed(Exception):
    pass


class KilledAfter(Checkpointer):
    """Stops training right after the checkpoint of step `at` is saved, as a kill at that moment would."""

    def __init__(self, *args, at: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.at = at

    def save(self, position, *args):
        path = super().save(position, *args)
        if position.step == self.at:
            raise Killed
        return path


@pytest.mark.slow
def test_resume_mid_epoch_trains_the_remaining_windows_to_the_same_weights(tmp_path):
    cfg = load_model_config(str(long_profile(tmp_path, steps=8)))
    fam = family(cfg)
    splits = load_splits(None)
    t = cfg.training

    def fresh():
        model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(splits["train"] + splits["dev"]))
        return model, tok, fam.build_features(cfg, tok, splits["train"][:40], with_labels=True)

    model, tok, feats = fresh()
    whole = fit(t, fam, model, tok, feats, max_steps=8, show_progress=False)
    interrupted, tok2, feats2 = fresh()
    with pytest.raises(Killed):  # step 3 is mid-epoch: epoch 0, windows 0-2 of 5 done
        fit(
            t,
            fam,
            interrupted,
            tok2,
            feats2,
            max_steps=8,
            show_progress=False,
            checkpoints=KilledAfter(tmp_path / "ckpt", 3, 2, "f", at=3),
        )
    resumed_model, tok3, feats3 = fresh()
    ckpt = Checkpointer(tmp_path / "ckpt", 3, 2, "f")
    resumed = fit(t, fam, resumed_model, tok3, feats3, max_steps=8, show_progress=False, checkpoints=ckpt)
    assert ckpt.resumed_at == 3 and resumed.steps == 8 and len(resumed.losses) == 8
    assert resumed.losses == pytest.approx(whole.losses, rel=1e-6)
    for (name, a), b in zip(model.named_parameters(), resumed_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.slow
def test_a_failure_after_fit_keeps_the_model_and_the_retry_does_not_train(monkeypatch, tmp_path):
    config = long_profile(tmp_path, "after-fit", steps=2, every=1)
    store = tmp_path / "store"
    real_predict = phases.predict

    def out_of_memory(ctx, out_dir):
        raise RuntimeError("CUDA out of memory (injected)")

    monkeypatch.setattr(phases, "predict", out_of_memory)
    with pytest.raises(RuntimeError, match="injected"):
        run_model(str(config), run_id="oom", debug=True, storage_url=str(store))
    work = get_settings().output_dir / "oom"
    saved = final_weights(work / ".after-fit.partial")
    assert json.loads((work / ".after-fit.state" / "fit.json").read_text())["train_steps"] == 2
    assert list_runs(LocalStorage(store)) == [], "nothing half-done is published"

    def no_training(*args, **kwargs):
        raise AssertionError("the retry trained again")

    monkeypatch.setattr(phases, "predict", real_predict)
    monkeypatch.setattr(phases, "fit", no_training)
    result = run_model(str(config), run_id="oom", debug=True, storage_url=str(store))
    assert result.metrics["train_steps"] == 2
    for name, tensor in saved.items():
        assert torch.equal(final_weights(result.run_dir)[name], tensor), name
    assert [(r.run_id, r.model) for r in list_runs(LocalStorage(store))] == [("oom", "after-fit")]
    assert not (work / ".after-fit.state").exists() and not (work / ".after-fit.partial").exists()


@pytest.mark.slow
def test_a_crash_around_the_save_rename_leaves_a_state_the_retry_finishes(monkeypatch, tmp_path):
    """The save phase is recorded before the `.partial` folder is renamed, and a retry completes the rename: a crash
    just before or just after the rename is harmless (a retry used to load the missing `.partial/model`)."""
    config = long_profile(tmp_path, "saving", steps=2, every=1)
    store = tmp_path / "store"
    real_rename = Path.rename
    crashes = ["before", "after"]

    def crashing_rename(self, target):
        if self.name != ".saving.partial" or not crashes:
            return real_rename(self, target)
        when = crashes.pop(0)
        if when == "after":
            real_rename(self, target)
        raise Killed(f"killed {when} the rename")

    monkeypatch.setattr(Path, "rename", crashing_rename)
    for when in ("before", "after"):
        with pytest.raises(Killed, match=when):
            run_model(str(config), run_id="saving", debug=True, storage_url=str(store))

    def no_training(*args, **kwargs):
        raise AssertionError("the retry trained again")

    monkeypatch.setattr(phases, "fit", no_training)
    result = run_model(str(config), run_id="saving", debug=True, storage_url=str(store))
    assert result.run_dir == get_settings().output_dir / "saving" / "saving" and result.metrics["train_steps"] == 2
    assert {p.name for p in result.run_dir.iterdir()} >= {"model", "metrics.json", "config.yaml", "predictions"}
    assert [(r.run_id, r.model) for r in list_runs(LocalStorage(store))] == [("saving", "saving")]
    assert not (result.run_dir.parent / ".saving.partial").exists()


class StopDuring:
    """The family, with SIGTERM arriving during training micro-batch `at` (a loss call in training mode) and a count
    of the dev rows summarized."""

    def __init__(self, fam, checkpoints: Checkpointer | None = None, at: int = 0):
        self.fam, self.checkpoints, self.at, self.calls, self.generated = fam, checkpoints, at, 0, 0

    def __getattr__(self, name):
        return getattr(self.fam, name)

    def loss(self, model, batch, label_smoothing=0.0):
        if model.training:
            self.calls += 1
            if self.checkpoints is not None and self.calls == self.at:
                self.checkpoints.stop.set()
        return self.fam.loss(model, batch)

    def generate(self, cfg, model, tok, features, progress=None):
        self.generated += len(features)
        return self.fam.generate(cfg, model, tok, features, progress)


@pytest.mark.slow
def test_a_stop_checkpoints_without_evaluating_and_the_resumed_run_evaluates_first(tmp_path):
    """SIGTERM during an epoch-end step: the checkpoint comes at once, with no dev generation in the grace period;
    the resumed run runs that evaluation first, so its curve and weights equal an uninterrupted run's."""
    from dialsum.engine.evaluation import Evaluator
    from dialsum.state.stop import Preempted

    cfg = load_model_config(str(long_profile(tmp_path, steps=3)))  # 16 rows: 2 steps an epoch, so step 2 ends one
    cfg = cfg.model_copy(
        update={
            "training": cfg.training.model_copy(
                update={"eval_score_rows": 4, "eval_loss_rows": 8, "checkpoint_every": None}
            ),
            "generation": cfg.generation.model_copy(update={"max_new_tokens": 8}),
        }
    )
    fam, splits, t = family(cfg), load_splits(None), cfg.training

    def run(wrapped: StopDuring, checkpoints: Checkpointer | None):
        model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(splits["train"] + splits["dev"]))
        feats = fam.build_features(cfg, tok, splits["train"][:16], with_labels=True)
        evaluator = Evaluator(cfg, wrapped, tok, splits["dev"])
        return model, fit(
            t,
            wrapped,
            model,
            tok,
            feats,
            max_steps=3,
            show_progress=False,
            checkpoints=checkpoints,
            evaluation=evaluator,
        )

    whole_model, whole = run(StopDuring(fam), None)
    stopper = Checkpointer(tmp_path / "ckpt", None, 2, "f")
    stopped = StopDuring(fam, stopper, at=4)  # two micro-batches a step: the 4th is step 2's last
    with pytest.raises(Preempted, match="after step 2"):
        run(stopped, stopper)
    assert stopped.generated == 0, "no dev summaries while stopping"
    assert [p.name for p in checkpoint.local_checkpoints(tmp_path / "ckpt")] == ["step-00000002"]
    resumed_family = StopDuring(fam)
    resumed_model, resumed = run(resumed_family, Checkpointer(tmp_path / "ckpt", None, 2, "f"))
    assert resumed_family.generated == 2 * 4  # the deferred epoch-end evaluation, then the last step's
    assert [r["step"] for r in resumed.evaluation["curve"]] == [r["step"] for r in whole.evaluation["curve"]] == [2, 3]
    for one, two in zip(whole.evaluation["curve"], resumed.evaluation["curve"]):
        assert two["dev_score"] == pytest.approx(one["dev_score"], abs=1e-9)
        assert two["dev_loss"] == pytest.approx(one["dev_loss"], rel=1e-5)
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    for (name, a), b in zip(whole_model.named_parameters(), resumed_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.slow
def test_sigterm_publishes_a_checkpoint_and_exits_within_the_grace_period(tmp_path):
    grace = 60
    env = env_for(tmp_path, str(tmp_path / "store"), DIALSUM_STOP_GRACE_SECONDS=str(grace))
    config, log = long_profile(tmp_path, steps=400, every=10), tmp_path / "train.log"
    state = tmp_path / "out" / "term" / ".long-bart.state"
    process = train_process(config, "term", env, log)
    wait_for_checkpoint(state / "checkpoints", process, log)  # an epoch end: training is well under way

    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    code = process.wait(timeout=grace + 30)
    assert time.monotonic() - sent < grace and code != 0, log.read_text()[-3000:]
    text = log.read_text()
    step = int(re.search(r"long-bart: stopped at step (\d+) of 400; checkpoint", text).group(1))
    assert code == 143 and "Traceback" not in text, text[-3000:]
    published = list_checkpoints("term", "long-bart", LocalStorage(tmp_path / "store"))
    assert published[-1] == checkpoint.checkpoint_name(step) and step < 400
    assert list_runs(LocalStorage(tmp_path / "store")) == [], "a stopped run is not a published run"


def test_resume_refuses_a_run_that_left_nothing(tmp_path):
    with pytest.raises(DialsumError, match="nothing to resume for run ghost/tiny-bart"):
        run_model("tiny-bart", run_id="ghost", debug=True, storage_url=str(tmp_path / "store"), resume=True)


def test_a_run_id_started_with_another_config_is_refused(tmp_path):
    Phases(tmp_path / "state", "one")
    with pytest.raises(DialsumError, match="different config or data"):
        Phases(tmp_path / "state", "two")


def test_checkpoints_are_kept_and_pruned_locally_and_in_storage(tmp_path):
    cfg = load_model_config("tiny-bart")
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    store = LocalStorage(tmp_path / "store")
    ckpt = Checkpointer(
        tmp_path / "ckpt",
        every=2,
        keep=cfg.training.keep_checkpoints,
        fingerprint="f",
        run_id="r",
        model="m",
        storage=store,
    )
    for step in range(1, 8):
        ckpt.after_step(
            step,
            [0.0] * step,
            epoch=0,
            window=step - 1,
            n_windows=10,
            total=7,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=None,
        )
    assert [p.name for p in checkpoint.local_checkpoints(tmp_path / "ckpt")] == ["step-00000006", "step-00000007"]
    assert list_checkpoints("r", "m", store) == ["step-00000006", "step-00000007"]
    assert not (tmp_path / "store" / "runs" / "r" / "m" / "checkpoints" / "step-00000002").exists()

    shutil.rmtree(tmp_path / "ckpt")
    fresh = torch.nn.Linear(3, 2)
    again = torch.optim.AdamW(fresh.parameters())
    position = Checkpointer(tmp_path / "ckpt", 2, 2, "f", "r", "m", store).restore(
        fresh, again, torch.optim.lr_scheduler.LambdaLR(again, lambda step: 1.0), None
    )
    assert (position.step, position.epoch, position.window) == (7, 0, 7)
    assert torch.equal(fresh.weight, model.weight)
    with pytest.raises(DialsumError, match="different config or data"):
        Checkpointer(tmp_path / "ckpt", 2, 2, "other", "r", "m", store).restore(fresh, again, scheduler, None)


def test_resume_flag_names_the_run_to_continue():
    from dialsum.cli.main import build_parser
    from dialsum.cli.train import _resume_run_id

    args = build_parser().parse_args(["train", "--models", "tiny-bart", "--resume", "r9"])
    _resume_run_id(args)
    assert args.run_id == "r9"
    clash = build_parser().parse_args(["train", "--models", "tiny-bart", "--resume", "r9", "--run-id", "r8"])
    with pytest.raises(DialsumError, match="name different runs"):
        _resume_run_id(clash)
