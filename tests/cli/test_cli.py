import hashlib
import json
import os
import subprocess
import sys

import pytest
import yaml
from support.s3_server import s3_client

from dialsum.cli.main import build_parser
from dialsum.cli.train import format_table
from dialsum.errors import DialsumError


def _run(args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "dialsum.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_unknown_model_lists_available():
    proc = _run(["train", "--models", "no-such-model", "--debug"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown model 'no-such-model'; available:" in proc.stderr and "tiny-qwen3" in proc.stderr


def test_single_mode_takes_one_model():
    args = build_parser().parse_args(["train", "--models", "tiny-bart", "tiny-llama", "--debug"])
    with pytest.raises(DialsumError, match="--mode multi_model"):
        args.func(args)


def test_gpus_relaunches_one_model_under_one_run_id(monkeypatch, tmp_path, capsys):
    import torch

    from dialsum.engine import distributed

    calls = []
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed, "launch", lambda argv, n: calls.append((argv, n)) or 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    store = str(tmp_path / "s")
    args = build_parser().parse_args(
        [
            "train",
            "--models",
            "tiny-bart",
            "--gpus",
            "2",
            "--debug",
            "--storage",
            store,
            "--set",
            "training.learning_rate=0.01",
        ]
    )
    assert args.func(args) == 0
    assert "no GPU found: --gpus 2 runs 2 data-parallel CPU processes" in capsys.readouterr().err
    ((argv, n),) = calls
    assert n == 2 and argv[:3] == ["train", "--models", "tiny-bart"] and "--gpus" not in argv
    assert argv[argv.index("--run-id") + 1] and {"--debug", "--storage", store} <= set(argv)
    assert argv[argv.index("--set") + 1] == "training.learning_rate=0.01"  # every rank trains the same config
    args = build_parser().parse_args(["train", "--mode", "multi_model", "--models", "a", "b", "--gpus", "2"])
    with pytest.raises(DialsumError, match="one model on several GPUs"):
        args.func(args)


@pytest.mark.slow
def test_train_debug_publishes_verified_manifest_to_s3(s3_bucket, moto_server, tmp_path, monkeypatch, capsys):
    from dialsum.cli.main import main

    monkeypatch.setenv("DIALSUM_STORAGE_URL", f"s3://{s3_bucket}/nightly")
    monkeypatch.setenv("DIALSUM_OUTPUT_DIR", str(tmp_path / "out"))
    assert main(["train", "--mode", "single", "--models", "tiny-bart", "--debug", "--run-id", "ci-debug"]) == 0
    client = s3_client(moto_server.endpoint)
    manifest = json.loads(
        client.get_object(Bucket=s3_bucket, Key="nightly/ci-debug/tiny-bart/manifest.json")["Body"].read()
    )
    files = manifest["files"]
    assert {"metrics.json", "config.yaml", "predictions/dev.csv", "predictions/test.csv"} <= {f["path"] for f in files}
    for entry in files:
        body = client.get_object(Bucket=s3_bucket, Key=f"nightly/ci-debug/tiny-bart/{entry['path']}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["sha256"] and len(body) == entry["size"]
    capsys.readouterr()
    assert main(["artifacts", "ls", f"s3://{s3_bucket}/nightly"]) == 0
    listing = capsys.readouterr().out
    assert "ci-debug" in listing and "tiny-bart" in listing


@pytest.mark.slow
def test_predict_and_evaluate_from_a_run_folder(tmp_path, monkeypatch, capsys):
    """In this process (`main`, as `dialsum` runs it); the journeys predict from a run folder in a fresh one."""
    from dialsum.cli.main import main
    from dialsum.data import sample_dir

    out = tmp_path / "out"
    monkeypatch.setenv("DIALSUM_OUTPUT_DIR", str(out))
    monkeypatch.setenv("DIALSUM_STORAGE_URL", str(tmp_path / "store"))
    train = ["train", "--models", "tiny-bart", "--debug", "--run-id", "r1"]
    assert main([*train, "--set", "training.learning_rate=0.01", "--set", "generation.max_new_tokens=40"]) == 0
    run_dir = out / "r1" / "tiny-bart"
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    assert (recorded["training"]["learning_rate"], recorded["generation"]["max_new_tokens"]) == (0.01, 40)
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["overrides"] == ["training.learning_rate=0.01", "generation.max_new_tokens=40"]
    own = {p: p.read_bytes() for p in (run_dir / "predictions").iterdir()}
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    capsys.readouterr()
    for expected in ("predict-r1-tiny-bart", "predict-r1-tiny-bart-2"):  # a new folder each time, never the run's
        assert main(["predict", "--run", str(run_dir)]) == 0
        stdout = capsys.readouterr().out
        assert (cwd / expected / "predictions" / "test.csv").is_file()
        assert stdout.splitlines()[0].split() == ["rows", "rouge1", "rouge2", "rougeL", "score"]
        assert stdout.splitlines()[-1].endswith(f"{expected}/predictions")
    assert {p: p.read_bytes() for p in (run_dir / "predictions").iterdir()} == own
    assert main(["predict", "--run", str(run_dir), "--out", str(run_dir / "again")]) == 2
    assert "never writes over a run's own files" in capsys.readouterr().err
    assert main(["predict", "--run", "r1/tiny-bart", "--out", str(tmp_path / "p"), "--json"]) == 0  # published
    assert json.loads(capsys.readouterr().out)["run"] == "r1/tiny-bart"
    dev = tmp_path / "p" / "predictions" / "dev.csv"
    assert main(["evaluate", "--predictions", str(dev), "--references", str(sample_dir() / "dev.csv"), "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"rouge1", "rouge2", "rougeL", "score", "rows"}


def test_format_table_aligns_columns_and_says_which_rows_scores_cover():
    table = format_table(
        [
            {"model": "a", "type": "t", "status": "completed", "dev_score": 61.234, "dev_rows": 499},
            {"model": "long-name", "type": "t", "status": "failed", "dev_score": None},
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["model", "type", "status", "dev_score", "(499", "rows)"]
    assert "61.23" in lines[1] and lines[2].split()[:3] == ["long-name", "t", "failed"]
    mixed = format_table(
        [{"model": "a", "dev_score": 1.0, "dev_rows": 16}, {"model": "b", "dev_score": 2.0, "dev_rows": 499}]
    )
    assert "1.00 (16 rows)" in mixed and "2.00 (499 rows)" in mixed


def test_evaluate_takes_the_fname_summary_references_its_help_describes(tmp_path, capsys):
    from dialsum.cli.main import main

    (tmp_path / "refs.csv").write_text(
        "fname,summary\nd1,#Person1#이 점심을 먹는다.\nd2,비가 온다.\n", encoding="utf-8"
    )
    (tmp_path / "preds.csv").write_text(
        ",fname,summary\n0,d2,비가 온다.\n1,d1,#Person1#이 점심을 먹는다.\n", encoding="utf-8"
    )
    args = ["evaluate", "--predictions", str(tmp_path / "preds.csv"), "--references", str(tmp_path / "refs.csv")]
    assert main([*args, "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["rows"] == 2 and scores["score"] == pytest.approx(100.0)
    assert main(args) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["rows", "rouge1", "rouge2", "rougeL", "score"]
    assert row.split() == ["2", "1.0000", "1.0000", "1.0000", "100.00"]


def _evaluate(tmp_path, capsys, rows: str, *flags: str) -> tuple[int, str, str]:
    from dialsum.cli.main import main

    (tmp_path / "refs.csv").write_text(
        "fname,summary\nd1,점심을 먹는다.\nd2,비가 온다.\nd3,눈이 온다.\n", encoding="utf-8"
    )
    (tmp_path / "preds.csv").write_text("fname,summary\n" + rows, encoding="utf-8")
    code = main(
        ["evaluate", "--predictions", str(tmp_path / "preds.csv"), "--references", str(tmp_path / "refs.csv"), *flags]
    )
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_refuses_unknown_and_duplicated_fnames_naming_the_first_few(tmp_path, capsys):
    known = "d1,점심을 먹는다.\nd2,비가 온다.\nd3,눈이 온다.\n"
    unknown = "".join(f"x{i},요약\n" for i in range(100))
    code, out, err = _evaluate(tmp_path, capsys, known + unknown)
    assert (
        code == 2
        and out == ""
        and err.strip().splitlines()
        == [f"dialsum: error: {tmp_path / 'preds.csv'}: 100 fname(s) not in the references: x0, x1, x2 and 97 more"]
    )
    code, out, err = _evaluate(tmp_path, capsys, known + "d2,다른 요약\nd1,또\n")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "2 fname(s) appear more than once: d1, d2" in err
    code, out, err = _evaluate(tmp_path, capsys, known + unknown, "--partial")
    assert code == 2 and "100 fname(s) not in the references" in err  # --partial allows a subset, not strangers


def test_evaluate_partial_scores_a_subset_and_says_so(tmp_path, capsys):
    code, out, err = _evaluate(tmp_path, capsys, "d2,비가 온다.\n")
    assert code == 2 and "no prediction for 2 of 3 reference fnames: d1, d3 (--partial" in err
    code, out, err = _evaluate(tmp_path, capsys, "d2,비가 온다.\n", "--partial")
    assert code == 0 and out.splitlines()[1].split()[0] == "1"
    assert out.splitlines()[-1] == "partial: scored 1 of 3 reference rows (--partial)"
    code, out, err = _evaluate(tmp_path, capsys, "d2,비가 온다.\n", "--partial", "--json")
    assert json.loads(out)["partial"] == "1 of 3 reference rows" and json.loads(out)["score"] == pytest.approx(100.0)


@pytest.mark.parametrize("command", ["train", "preflight"])
def test_a_set_typo_is_one_line_that_suggests_the_key_before_torch_or_prefect(command):
    code = (
        "import sys; from dialsum.cli.main import main; "
        f"rc = main(['{command}', '--models', 'qwen3-4b', '--set', 'training.lerning_rate=1']); "
        "print(rc, 'torch' in sys.modules, 'prefect' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False", "False"]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("dialsum: error: ") and "did you mean `training.learning_rate`?" in line


def test_config_show_prints_the_resolved_profile_with_overrides(capsys, tmp_path):
    from dialsum.cli.main import main

    overlay = tmp_path / "best.yaml"
    overlay.write_text("training: {learning_rate: 0.02, epochs: 5}\n", encoding="utf-8")
    assert main(["config", "show", "tiny-bart", "--overlay", str(overlay), "--set", "training.epochs=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["name"] == "tiny-bart" and shown["type"] == "encoder_decoder"
    assert (shown["training"]["learning_rate"], shown["training"]["epochs"]) == (0.02, 7)  # --set after the overlay
    assert main(["config", "show", "tiny-bart", "--set", "lora.r=8"]) == 2
    assert "lora is only supported for type causal_lm" in capsys.readouterr().err
