"""A child that a dialsum process starts ends when that process is gone, even after `kill -9` of it: directly
(`watch_parent`) or under the wrapper for third-party programs (`python -m dialsum.engine.lifeline -m MODULE`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from dialsum.engine import lifeline

STARTER = """
import os, subprocess, sys
from dialsum.engine import lifeline
env = {**os.environ, **lifeline.child_env()}
direct = subprocess.Popen([sys.executable, "-c", "from dialsum.engine import lifeline; import time; "
                           "assert lifeline.watch_parent(); time.sleep(120)"], env=env)
wrapped = subprocess.Popen(lifeline.wrap([sys.executable, "-m", "stubborn"]), env=env)
print(direct.pid, wrapped.pid, flush=True)
direct.wait()
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_children_end_within_seconds_of_a_kill_9_of_their_parent(tmp_path: Path) -> None:
    # a program that ignores SIGTERM: the lifeline ends it anyway, after its grace period
    (tmp_path / "stubborn.py").write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('child', flush=True)\ntime.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    env.pop(lifeline.PARENT_ENV, None)
    starter = subprocess.Popen([sys.executable, "-c", STARTER], env=env, stdout=subprocess.PIPE, text=True)
    try:
        children = [int(pid) for pid in starter.stdout.readline().split()]
        assert len(children) == 2 and all(alive(pid) for pid in children)
        time.sleep(1.0)  # both watch by now
        starter.kill()
        starter.wait()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if alive(pid)]
    finally:
        starter.kill()
        for pid in locals().get("children", []):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_without_a_dialsum_parent_nothing_is_watched(monkeypatch) -> None:
    monkeypatch.delenv(lifeline.PARENT_ENV, raising=False)
    assert lifeline.watch_parent() is False
    assert lifeline.wrap(["prefect", "worker"]) == ["prefect", "worker"]
    assert lifeline.wrap([sys.executable, "-m", "uvicorn", "x"]) == [
        sys.executable,
        "-m",
        "dialsum.engine.lifeline",
        "-m",
        "uvicorn",
        "x",
    ]


def test_the_grace_period_ends_a_process_whose_interpreter_lock_is_held() -> None:
    """After its grace period the lifeline exits through the kernel (SIGALRM), not through Python: a main thread in
    C code that keeps the interpreter lock (as Kiwi does while it loads) cannot hold the exit back."""
    code = (
        "import signal, threading, time\n"
        "from dialsum.engine import lifeline\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "threading.Thread(target=lifeline._end, args=(1.0,), daemon=True).start()\n"
        "time.sleep(0.3)\n"
        "sum(range(10**12))  # C code that holds the interpreter lock for many minutes\n"
    )
    started = time.monotonic()
    process = subprocess.run([sys.executable, "-c", code], timeout=30, check=False)
    assert process.returncode == -signal.SIGALRM and time.monotonic() - started < 30
