"""SIGTERM stops a command as the first Ctrl-C does; Ctrl-C and SIGTERM stop a sweep's trials without using up
its budget; and nothing a command starts (the temporary Prefect API, local children, their helpers) outlives
it, `kill -9` included. Every command here is embedded: the stopped ones start their own temporary Prefect API
(on an already migrated database, `migrated_home`), the runs that finish them report to the session's server."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.prefect_server import migrated_home

from dialsum.data import sample_dir
from dialsum.engine import lifeline

REPO = Path(__file__).resolve().parents[2]
SPACE = str(REPO / "configs" / "sweeps" / "tiny-bart.yaml")
pytestmark = pytest.mark.slow


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "PREFECT_HOME", "DIALSUM_"))}
    return (
        base
        | {
            "DIALSUM_OUTPUT_DIR": str(tmp_path / "outputs"),
            "DIALSUM_STORAGE_URL": str(tmp_path / "store"),
            "PREFECT_HOME": str(migrated_home(tmp_path / "prefect")),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "WANDB_MODE": "disabled",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "300",
        }
        | extra
    )


def dialsum(*args: str) -> list[str]:
    return [sys.executable, "-m", "dialsum.cli", *args]


def fan_out(command: str, profile: str, data: str, *options: str) -> list[str]:
    """`dialsum sweep` or `dialsum kfold` of `profile` on `data` with `options`, its children polled every 0.5 s."""
    return dialsum(command, "--models", profile, *options, "--debug", "--data", data, "--poll-seconds", "0.5")


def small_data(folder: Path) -> Path:
    """12 train, 4 dev and 4 test rows of the bundled sample."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 12), ("dev", 4), ("test", 4)):
        with open(sample_dir() / f"{split}.csv", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))[:n]
        with open(folder / f"{split}.csv", "w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return folder


def trial_profile(folder: Path) -> Path:
    """tiny-bart cut to eight optimizer steps on eight rows (a stop lands while it trains) and a short greedy
    decode."""
    base = (REPO / "configs" / "models" / "tiny-bart.yaml").read_text(encoding="utf-8").split("\ntraining:")[0]
    path = folder / "sweep-bart.yaml"
    path.write_text(
        base + "\ntraining: {epochs: 2, batch_size: 2, length_group_batches: 2, debug_rows: 8, "
        "debug_steps: 8, eval_every: 1, eval_score_rows: 4, checkpoint_every: null}\n"
        "generation: {batch_size: 8, max_new_tokens: 16, num_beams: 1}\n",
        encoding="utf-8",
    )
    return path


def start(command: list[str], tmp_path: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            command, env=env(tmp_path), stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path
        )


def wait_for(process: subprocess.Popen, log: Path, pattern: str, count: int = 1, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while len(re.findall(pattern, log.read_text(errors="replace"))) < count:
        assert process.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
        time.sleep(0.1)


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, found by walking /proc."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = {int(c) for c in (task / "children").read_text().split()}
            except OSError:
                continue
            todo += list(children - found)
            found |= children
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_ended(process: subprocess.Popen, timeout: float) -> float:
    """Seconds until `process` ended (killing its group when it is still there after `timeout`)."""
    sent = time.monotonic()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return time.monotonic() - sent


def assert_all_gone(pids: set[int], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for p in pids if alive(p)}
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still alive {seconds} s after the command ended: {left}"


def test_sigterm_stops_a_multi_model_run_as_ctrl_c_does_and_resume_finishes(tmp_path: Path, prefect_api: str) -> None:
    train = dialsum("train", "--mode", "multi_model", "--models", "tiny-bart", "tiny-qwen3", "--debug")
    log = tmp_path / "first.log"
    first = start([*train, "--run-id", "t1"], tmp_path, log)
    wait_for(first, log, "eval at step 1")
    started = descendants(first.pid)
    first.send_signal(signal.SIGTERM)  # what `timeout`, `docker stop` and systemd send: to the command alone
    took = wait_ended(first, 15)
    output = log.read_text()
    assert first.returncode == 143 and took <= 15, f"exit {first.returncode} after {took:.1f} s\n{output[-3000:]}"
    after = output.split("eval at step 1", 1)[1]
    for noise in ("Traceback", "Crash detected", "ConnectError", "published t1/"):
        assert noise not in after, f"{noise!r} after SIGTERM:\n{after}"
    stopped = re.search(
        r"^dialsum: (tiny-bart|tiny-qwen3): stopped (at step \d of 3|after training|while predicting)", after, re.M
    )
    assert stopped, after
    assert after.rstrip().endswith("dialsum: stopped; continue with --resume t1")
    assert list((tmp_path / "store").rglob("step-*")), "no checkpoint published"
    assert_all_gone(started)  # the temporary Prefect API among them

    rerun = subprocess.run(
        [*train, "--resume", "t1"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env(tmp_path, PREFECT_API_URL=prefect_api),
        cwd=tmp_path,
    )
    assert rerun.returncode == 0, (rerun.stdout + rerun.stderr)[-3000:]
    assert "ensemble (" in rerun.stdout
    assert re.search(rf"^{stopped.group(1)} +\S+ +completed", rerun.stdout, re.M), rerun.stdout


@pytest.mark.parametrize("command", ["multi_model", "sweep", "kfold"])
def test_kill_9_of_a_command_leaves_no_process_it_started(command: str, tmp_path: Path) -> None:
    data, profile = str(small_data(tmp_path / "data")), str(trial_profile(tmp_path))
    # the command is killed once its child trains (one at a time: a second child adds time, not coverage)
    argv = {
        "multi_model": dialsum(
            "train", "--mode", "multi_model", "--models", profile, "tiny-qwen3", "--debug", "--data", data
        ),
        "sweep": fan_out("sweep", profile, data, "--space", SPACE, "--trials", "2"),
        "kfold": fan_out("kfold", profile, data, "--k", "2"),
    }[command]
    log = tmp_path / "command.log"
    process = start(argv, tmp_path, log)
    wait_for(process, log, "eval at step 1")
    started = descendants(process.pid)
    assert started
    process.send_signal(signal.SIGKILL)
    process.wait()
    # a child notices within a poll, or after the C call that holds its interpreter lock (Kiwi loading: seconds
    # under load), then ends within its grace period
    assert_all_gone(started, lifeline.GRACE_SECONDS + 10)


def test_ctrl_c_stops_a_sweep_within_its_budget_and_the_printed_command_finishes_it(
    tmp_path: Path, prefect_api: str
) -> None:
    data, profile = str(small_data(tmp_path / "data")), str(trial_profile(tmp_path))
    log = tmp_path / "sweep.log"
    sweep = fan_out("sweep", profile, data, "--space", SPACE, "--trials", "2", "--parallel", "2", "--study", "s3")
    first = start(sweep, tmp_path, log)
    wait_for(first, log, r"eval at step 1", count=2)
    os.killpg(first.pid, signal.SIGINT)  # Ctrl-C at a terminal: the whole process group
    took = wait_ended(first, 15)
    output = log.read_text()
    assert first.returncode == 130 and took <= 15, f"exit {first.returncode} after {took:.1f} s\n{output[-4000:]}"
    for noise in ("Traceback", "ConnectError", "Error logging to API", "Crash detected"):
        assert noise not in output, f"{noise!r}:\n{output[-4000:]}"
    assert re.search(r"^dialsum: trial \d \(s3-t\d{4}\): .*stopped", output, re.M), output[-3000:]
    command = re.search(r"^dialsum: stopped; continue with: (dialsum sweep .*)$", output, re.M)
    assert command and "--study s3 --trials 2" in command.group(1), output[-3000:]

    argv = command.group(1).split()
    rest = subprocess.run(
        dialsum(*argv[1:]),
        capture_output=True,
        text=True,
        timeout=900,
        env=env(tmp_path, PREFECT_API_URL=prefect_api),
        cwd=tmp_path,
    )
    assert rest.returncode == 0, (rest.stdout + rest.stderr)[-4000:]
    trials = (tmp_path / "store" / "sweeps" / "s3" / "trials.csv").read_text().strip().splitlines()
    assert len(trials) == 1 + 2, trials
    assert not [row for row in trials[1:] if ",fail" in row.lower()], trials
