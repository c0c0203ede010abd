"""Benchmarks cannot rot: every `bench/*.py` runs in its smoke mode (tiny sizes, seconds), and a broken one
fails here. A new benchmark is found by its file name; `bench/gpu/run.py` has its own CPU test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted(p for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every benchmark's smoke mode, run once for the module; bench/results/ must come out untouched."""
    out = tmp_path_factory.mktemp("bench-smoke")
    results = ROOT / "bench" / "results"
    before = {p.name: p.stat().st_mtime_ns for p in results.iterdir()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIALSUM_", "PREFECT_API_URL"))}
    smoke = ROOT / "tests" / "support" / "bench_smoke.py"
    proc = subprocess.run(
        [sys.executable, str(smoke), str(out), *map(str, BENCHES)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=out,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {p.name: p.stat().st_mtime_ns for p in results.iterdir()} == before, "a smoke run wrote bench/results/"
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("bench", BENCHES, ids=[p.stem for p in BENCHES])
def test_smoke_mode_passes(smoke_runs: dict[str, dict], bench: Path) -> None:
    run = smoke_runs[bench.stem]
    output = Path(run["log"]).read_text(encoding="utf-8", errors="replace")
    assert run["rc"] == 0, f"{bench.name} --smoke exited {run['rc']}:\n{output[-4000:]}"
    if "skipped" not in output.splitlines()[-1]:
        result = json.loads(output[output.rindex('{\n  "name"') :])
        assert result["name"] == bench.stem and {"unit", "ours", "baseline", "ratio", "goal"} <= result.keys()
