"""Ctrl-C: the first SIGINT asks runs to stop at a safe point (the loop checkpoints, then stops), a second exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from dialsum.engine.checkpoint import Checkpointer, local_checkpoints
from dialsum.state import stop


@pytest.fixture(autouse=True)
def _no_request():
    stop.clear()
    yield
    stop.clear()


def test_outside_a_cooperative_region_the_first_sigint_interrupts_at_once() -> None:
    with stop.on_signals():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(2)
    assert stop.requested()


def test_inside_a_cooperative_region_the_first_sigint_only_asks(capsys: pytest.CaptureFixture) -> None:
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite was started in a shell's background
    with stop.on_signals(), stop.cooperative():
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100):
            if stop.requested():
                break
            threading.Event().wait(0.01)
    assert stop.requested()
    assert "each model finishes its current step" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(stop.Interrupted, match="m: not started"):
        stop.check("m: not started")


def test_a_second_sigint_exits_130_at_once_after_the_callbacks() -> None:
    code = (
        "import os, signal, time\n"
        "from dialsum.state import stop\n"
        "stop.at_hard_exit(lambda: print('cleaned up', flush=True))\n"
        "with stop.on_signals(), stop.cooperative():\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2)\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and "cleaned up" in proc.stdout
    assert "stopped at once (second Ctrl-C)" in proc.stderr and "Traceback" not in proc.stderr


def test_after_a_stop_request_the_loop_writes_a_checkpoint_then_stops(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    ckpt = Checkpointer(tmp_path, every=100, keep=2, fingerprint="f", model="m")
    assert not ckpt.due(3, 0, 10, 20)
    stop.request()
    assert ckpt.due(3, 0, 10, 20)
    with pytest.raises(stop.Interrupted, match="m: stopped at step 3 of 20; checkpoint step-00000003 saved"):
        ckpt.after_step(3, [1.0, 0.9, 0.8], 0, 2, 10, 20, model, optimizer, scheduler, None)
    assert [p.name for p in local_checkpoints(tmp_path)] == ["step-00000003"]
    ckpt.after_step(20, [0.5], 1, 9, 10, 20, model, optimizer, scheduler, None)  # the last step: training is done


def test_sigterm_asks_as_the_first_ctrl_c_does_and_never_exits_at_once(capsys: pytest.CaptureFixture) -> None:
    with stop.on_signals(), stop.cooperative():
        for _ in range(2):  # a process group or cgroup may get it more than once
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(0.2)
        assert stop.requested() and stop.exit_code() == 143 and stop.cause() == "SIGTERM"
        assert stop.handling()
    assert "stopping (SIGTERM): each model finishes its current step" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and not stop.handling()
    stop.clear()
    assert stop.exit_code() == 130


def test_a_second_ctrl_c_names_how_to_continue() -> None:
    code = (
        "import os, signal, time\n"
        "from dialsum.state import stop\n"
        "stop.continue_with('--resume r42')\n"
        "with stop.on_signals(), stop.cooperative():\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2)\n"
        "    os.kill(os.getpid(), signal.SIGINT); time.sleep(30)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130 and "continue with --resume r42" in proc.stderr


def test_under_the_cli_handler_sigterm_stops_training_as_ctrl_c_does(tmp_path: Path) -> None:
    """Where the CLI handles SIGTERM, the loop stops with `Interrupted` (one line, exit 143), not `Preempted`."""
    from dialsum.engine.checkpoint import stop_on_sigterm

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    ckpt = Checkpointer(tmp_path, every=100, keep=2, fingerprint="f", model="m")
    with stop.on_signals(), stop.cooperative(), stop_on_sigterm(ckpt, grace=60):
        os.kill(os.getpid(), signal.SIGTERM)
        threading.Event().wait(0.2)
        with pytest.raises(stop.Interrupted, match="m: stopped at step 3 of 20"):
            ckpt.after_step(3, [1.0], 0, 2, 10, 20, model, optimizer, scheduler, None)
    assert stop.exit_code() == 143


def test_a_process_still_running_after_the_grace_period_exits_143() -> None:
    code = (
        "import os, signal, time\n"
        "from dialsum.state import stop\n"
        "with stop.on_signals(), stop.cooperative():\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(60)\n"
    )
    env = {**os.environ, "DIALSUM_STOP_GRACE_SECONDS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, env=env)
    assert proc.returncode == 143 and "Traceback" not in proc.stderr, proc.stderr
