"""Run benchmarks' smoke modes (`bench/<name>.py --smoke`), each in a fork of one process that imported torch,
transformers and the model families once, the causal family's peft and bitsandbytes too (each run then costs its
own work, not a new interpreter's imports), two at a time on machines with two cores or more.

Usage: python tests/support/bench_smoke.py OUT_DIR BENCH.py...   prints {name: {"rc", "seconds", "log"}} as JSON.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path


def start_one(script: Path, log: Path) -> int:
    """Fork a child that runs `script --smoke` as __main__, output to `log`; returns its pid."""
    pid = os.fork()
    if pid == 0:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.argv = [str(script), "--smoke"]
        sys.path.insert(0, str(script.parent))
        code = 0
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, (int, type(None))):
                print(exc.code)
        except BaseException:  # the log shows it; the parent reports the exit code
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return pid


def main(out_dir: Path, scripts: list[Path], jobs: int) -> dict[str, dict]:
    """Run the scripts' smoke modes, `jobs` at a time (benchmarks use one torch thread each)."""
    import torch  # noqa: F401  - imported once, shared by every fork; nothing computes before forking
    import transformers  # noqa: F401

    import dialsum.models  # noqa: F401
    import dialsum.models.causal_lm  # noqa: F401  - peft and bitsandbytes: about 6 s of imports per causal bench

    results, running, waiting = {}, {}, list(scripts)
    while waiting or running:
        while waiting and len(running) < jobs:
            script = waiting.pop(0)
            running[start_one(script, out_dir / f"{script.stem}.log")] = (script, time.monotonic())
        pid, status = os.wait()
        if pid not in running:
            continue
        script, started = running.pop(pid)
        results[script.stem] = {
            "rc": os.waitstatus_to_exitcode(status),
            "seconds": round(time.monotonic() - started, 1),
            "log": str(out_dir / f"{script.stem}.log"),
        }
    return results


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]], min(2, os.cpu_count() or 1))))
