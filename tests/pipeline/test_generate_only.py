"""Runs of an API model through the CLI against a loopback chat server (tests/support/chat_server.py): a torch-free run
that records its bill, failed rows and a cost budget resumed (in this process), a kill -9 resumed without paying
twice, a finished run rerun for free, a planted API key found in no output, and an API model beside tiny-bart in a
multi-model run's ensemble and MBR."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.chat_server import ChatServer
from support.prefect_server import migrated_home

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "accelerate")
PLANTED = "sk-planted-9f8e7d6c5b4a3210"


def api_profile(folder: Path, server: ChatServer, **extra: str) -> Path:
    path = folder / "fake-api.yaml"
    lines = [
        "type: chat_api",
        "model: fake-solar",
        f"base_url: {server.url}",
        "api_key_env: null",
        "price: {input_per_million: 0.5, output_per_million: 1.5}",
        "few_shot: {k: 2, method: first}",
        "limits: {concurrency: 4, requests_per_minute: null, backoff_seconds: 0.01, timeout_seconds: 5}",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API_URL", "PREFECT_HOME"))}
    return (
        base
        | {
            "DIALSUM_OUTPUT_DIR": str(tmp_path / "outputs"),
            "DIALSUM_STORAGE_URL": str(tmp_path / "store"),
            "PREFECT_HOME": str(migrated_home(tmp_path / "prefect")),
        }
        | extra
    )


def dialsum(tmp_path: Path, *argv: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dialsum.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(tmp_path, **extra),
        cwd=tmp_path,
    )


def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *argv: str):
    """`dialsum ARGV` in this process (`main`, with `env`'s settings): its exit code, stdout and stderr."""
    from dialsum.cli.main import main

    for name in ("DIALSUM_OUTPUT_DIR", "DIALSUM_STORAGE_URL"):
        monkeypatch.setenv(name, env(tmp_path)[name])
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def server():
    srv = ChatServer(latency=0.05).start()
    yield srv
    srv.stop()


@pytest.mark.slow
def test_api_only_run_loads_no_torch_and_records_its_bill(tmp_path: Path, server: ChatServer) -> None:
    profile = api_profile(tmp_path, server)
    code = (
        "import json, sys, time; start = time.time(); from dialsum.cli.main import main; "
        f"rc = main(['train', '--models', '{profile}', '--run-id', 'api', '--debug']); "
        f"print(json.dumps({{'rc': rc, 'start': start, 'heavy': [m for m in {HEAVY!r} if m in sys.modules]}}))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert outcome["rc"] == 0 and outcome["heavy"] == []
    print(f"API-only run: first request {server.requests[0]['t'] - outcome['start']:.2f} s after start")
    metrics = json.loads((tmp_path / "store" / "api" / "fake-api" / "metrics.json").read_text(encoding="utf-8"))
    api = metrics["api"]
    assert api["requests"] == len(server.requests) == 2 * 32 and api["failed_rows"] == 0
    assert api["tokens_in"] > 0 and api["tokens_out"] > 0 and api["latency_p95_s"] >= api["latency_p50_s"] > 0
    assert api["cost_usd"] == pytest.approx((api["tokens_in"] * 0.5 + api["tokens_out"] * 1.5) / 1e6, abs=1e-6)
    rows = [
        json.loads(line)
        for line in (tmp_path / "store" / "api" / "fake-api" / "predictions" / "dev_rows.jsonl")
        .read_text(encoding="utf-8")
        .splitlines()
    ]
    assert len(rows) == 32 and all(len(r["shots"]) == 2 and r["error"] is None for r in rows)
    assert metrics["dev"]["score"] > 0
    sent = len(server.requests)
    predicted = dialsum(
        tmp_path,
        "predict",
        "--json",
        "--run",
        str(tmp_path / "outputs" / "api" / "fake-api"),
        "--out",
        str(tmp_path / "again"),
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    assert len(server.requests) - sent == 2 * (48 - 32)  # the debug run's 32 rows a split come from its cache
    assert json.loads(predicted.stdout)["dev"]["score"] > 0


@pytest.mark.slow
def test_failed_rows_fail_the_run_and_a_resume_retries_only_them(
    tmp_path: Path, server: ChatServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    server.faults = {n: "500" for n in range(1, 40)}  # the first requests fail through all their retries
    profile = api_profile(
        tmp_path,
        server,
        **{"limits": "{concurrency: 1, max_retries: 1, backoff_seconds: 0.01, requests_per_minute: null}"},
    )
    code, _, err = in_process(
        tmp_path, monkeypatch, capsys, "train", "--models", str(profile), "--run-id", "r", "--debug"
    )
    assert code != 0 and "rows failed after retries (allowed: max_failed_rows=0)" in err
    sent = len(server.requests)
    code, _, err = in_process(
        tmp_path, monkeypatch, capsys, "train", "--models", str(profile), "--resume", "r", "--debug"
    )
    assert code == 0, err[-3000:]
    api = json.loads((tmp_path / "store" / "r" / "fake-api" / "metrics.json").read_text(encoding="utf-8"))["api"]
    ok_before = sum(1 for r in server.requests[:sent] if r["fault"] is None)
    assert api["cache_hits"] == ok_before and api["requests"] == len(server.requests) - sent == 64 - ok_before
    summaries = (tmp_path / "store" / "r" / "fake-api" / "predictions" / "dev.csv").read_text(encoding="utf-8")
    assert ",\n" not in summaries.replace("\r", "")  # no empty summary


@pytest.mark.slow
def test_budget_stops_the_run_and_a_resume_with_a_larger_one_pays_nothing_twice(
    tmp_path: Path, server: ChatServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    profile = api_profile(
        tmp_path, server, price="{input_per_million: 1000, output_per_million: 1000}", max_cost_usd="10"
    )
    train = ["train", "--models", str(profile), "--debug"]
    code, _, err = in_process(tmp_path, monkeypatch, capsys, *train, "--run-id", "b")
    assert code != 0 and "stopped before passing the cost budget of $10" in err
    paid = len(server.requests)
    assert 0 < paid < 64
    code, _, err = in_process(tmp_path, monkeypatch, capsys, *train, "--resume", "b", "--set", "max_cost_usd=1000")
    assert code == 0, err[-3000:]
    keys = [(r["messages"], r["seed"]) for r in server.requests]
    assert len(keys) == len(set(keys)) == 64


@pytest.mark.slow
def test_kill_9_then_resume_pays_only_for_requests_in_flight(tmp_path: Path) -> None:
    server = ChatServer(latency=0.3).start()
    try:
        profile = api_profile(tmp_path, server)
        train = [sys.executable, "-m", "dialsum.cli", "train", "--models", str(profile), "--run-id", "k"]
        proc = subprocess.Popen(
            train, env=env(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 300
        while len(server.requests) < 48 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        before = len(server.requests)
        assert 48 <= before < 96
        resumed = dialsum(tmp_path, "train", "--models", str(profile), "--resume", "k")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        keys = [(r["messages"], r["seed"]) for r in server.requests]
        repeated = len(keys) - len(set(keys))
        assert len(set(keys)) == 96 and repeated <= 4  # at most the concurrency limit was in flight at the kill
        print(f"kill -9 after {before} requests; the resume sent {len(keys) - before}, {repeated} of them again")
        done = len(server.requests)
        again = dialsum(tmp_path, "train", "--models", str(profile), "--run-id", "k")
        assert again.returncode == 0 and "already complete" in again.stdout + again.stderr
        assert len(server.requests) == done
    finally:
        server.stop()


@pytest.mark.slow
def test_planted_key_appears_in_no_output(tmp_path: Path) -> None:
    server = ChatServer(faults={3: "auth"}).start()
    try:
        profile = api_profile(tmp_path, server, api_key_env="UPSTAGE_API_KEY", max_failed_rows="1")
        run = dialsum(
            tmp_path,
            "-v",
            "train",
            "--mode",
            "multi_model",
            "--models",
            str(profile),
            "--run-id",
            "key",
            "--debug",
            UPSTAGE_API_KEY=PLANTED,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"Bearer {PLANTED}" in server.authorizations  # the key was sent, so it could have leaked
        rows = (tmp_path / "store" / "key" / "fake-api" / "predictions" / "dev_rows.jsonl").read_text(encoding="utf-8")
        assert "invalid key Bearer ***" in rows  # the server's echo of it is in an error, scrubbed
        assert (tmp_path / "prefect" / "prefect.db").is_file()  # the flow runs' parameters and logs are searched too
        leaks = [str(p) for p in tmp_path.rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()]
        assert leaks == [] and PLANTED not in run.stdout + run.stderr
    finally:
        server.stop()


@pytest.mark.slow
def test_api_model_joins_the_ensemble_and_mbr_beside_tiny_bart(
    tmp_path: Path, server: ChatServer, prefect_api: str
) -> None:
    profile = api_profile(tmp_path, server)
    run = dialsum(
        tmp_path,
        "train",
        "--mode",
        "multi_model",
        "--models",
        "tiny-bart",
        str(profile),
        "--run-id",
        "team",
        "--debug",
        "--set",
        "generation.num_candidates=3",
        PREFECT_API_URL=prefect_api,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    print(run.stdout)
    table = run.stdout.splitlines()
    assert any(line.startswith("fake-api") and "chat_api" in line and "completed" in line for line in table)
    ensemble = json.loads((tmp_path / "store" / "team" / "ensemble" / "ensemble.json").read_text(encoding="utf-8"))
    assert "fake-api" in json.dumps(ensemble["members"] if "members" in ensemble else ensemble)
    assert any("mbr" in name for name in ensemble.get("strategy_scores") or ensemble.get("scores") or {})
    seeds = {r["seed"] for r in server.requests}
    assert seeds == {42, 43, 44}
    api = json.loads((tmp_path / "store" / "team" / "fake-api" / "metrics.json").read_text(encoding="utf-8"))["api"]
    assert api["requests"] == 3 * 64 and api["tokens_in"] > 0 and api["cost_usd"] > 0
