"""Checks before any work: every input, folder and storage mistake is one line in under 3 s of wall time, before
torch, transformers or Prefect load, naming only options the command accepts, and leaving nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.s3_server import CREDENTIALS

from dialsum.cli.main import build_parser
from dialsum.config import dump_config, load_model_config

ROOT = Path(__file__).resolve().parents[2]
WRAPPER = (
    "import sys\nfrom dialsum.cli.main import main\nrc = main(sys.argv[1:])\n"
    "print('loaded:', *[m for m in ('torch', 'transformers', 'prefect') if m in sys.modules])\nsys.exit(rc)\n"
)


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """`cwd/`, where commands run, `home/` and `ro/`, a folder on a read-only file system for the commands."""
    for name in ("cwd", "ro", "home"):
        (tmp_path / name).mkdir()
    if os.getuid() != 0:
        os.chmod(tmp_path / "ro", 0o555)
    elif subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("as root, a read-only folder needs a mount namespace (unshare -m), which is not allowed here")
    return tmp_path


def cli(place: Path, args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Run `dialsum ARGS` in place/cwd; as root, in a mount namespace where place/ro is a read-only bind mount
    (root ignores folder permissions)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIALSUM_") or k == "DIALSUM_CONFIG_DIR"}
    base |= {
        "HOME": str(place / "home"),
        "DIALSUM_CACHE_DIR": str(place / "home" / "cache"),
        "HF_HOME": str(place / "home" / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-c", WRAPPER, *args]
    if os.getuid() == 0:
        command = [
            "unshare",
            "-m",
            "sh",
            "-c",
            'mount --bind -o ro "$0" "$0" && exec "$@"',
            str(place / "ro"),
            *command,
        ]
    started = time.monotonic()
    proc = subprocess.run(
        command, cwd=place / "cwd", capture_output=True, text=True, timeout=120, env=base | (env or {})
    )
    return proc, time.monotonic() - started


def accepted_options(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    for name in ("artifacts_command",):
        nested = next((a for a in sub._actions if a.dest == name), None)
        if nested is not None:
            return {opt for p in nested.choices.values() for opt in p._option_string_actions}
    return set(sub._option_string_actions) | set(parser._option_string_actions)


def fake_run_folder(folder: Path) -> Path:
    (folder / "model").mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(load_model_config("tiny-bart")), encoding="utf-8")
    return folder


CASES = {
    "unknown model": (
        ["train", "--models", "tiny-brat", "--debug"],
        {},
        "unknown model 'tiny-brat'; did you mean `tiny-bart`?",
    ),
    "preflight unknown model": (["preflight", "--models", "tiny-brat"], {}, "unknown model 'tiny-brat'"),
    "predict on a folder that is not a run": (
        ["predict", "--run", "."],
        {},
        "--run . is not a run folder: no config.yaml",
    ),
    "resume an unknown run id": (
        ["train", "--models", "tiny-bart", "--resume", "nosuchid"],
        {},
        "nothing to resume for run nosuchid/tiny-bart",
    ),
    "missing bucket": (
        ["train", "--models", "tiny-bart", "--storage", "s3://nobucket/x"],
        "S3",
        "storage s3://nobucket/x is not writable",
    ),
    "read-only storage folder": (
        ["train", "--models", "tiny-bart", "--storage", "{ro}/store"],
        {},
        "storage {ro}/store is not writable",
    ),
    "read-only output folder": (
        ["train", "--models", "tiny-bart", "--debug"],
        {"DIALSUM_OUTPUT_DIR": "{ro}/outputs"},
        "cannot write to the output folder {ro}/outputs",
    ),
    "read-only predict --out": (
        ["predict", "--run", "{run}", "--out", "{ro}/p"],
        {},
        "cannot write to the output folder {ro}/p",
    ),
    "predict a run id that is not published": (
        ["predict", "--run", "r9/tiny-bart"],
        {},
        "--run r9/tiny-bart: no such folder, and no published run r9/tiny-bart in",
    ),
    "read-only artifacts get destination": (
        ["artifacts", "get", "r1", "tiny-bart", "{ro}/fetched"],
        {},
        "cannot write to the destination folder {ro}/fetched: {ro} is on a read-only file system",
    ),
    "read-only sample-data --out": (
        ["sample-data", "--out", "{ro}/data"],
        {},
        "cannot write to the output folder {ro}/data",
    ),
    "bad data row": (
        ["train", "--models", "tiny-bart", "--data", "{data}"],
        {},
        "{data}/dev.csv: row 1 (fname d1): empty dialogue",
    ),
    "hub checkpoint not cached, hub offline": (
        ["train", "--models", "kobart", "--debug"],
        {},
        "kobart: digit82/kobart-summarization is not a local folder and not in the Hugging Face cache",
    ),
    "hub checkpoint not cached, hub unreachable": (
        ["train", "--models", "kobart", "--debug"],
        {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
        "127.0.0.1 cannot be reached",
    ),
    "a --set model folder that does not exist": (
        ["train", "--models", "kobart", "--set", "model=/nonexistent/ckpt"],
        {},
        "kobart: model /nonexistent/ckpt: no such folder",
    ),
    "preflight, hub checkpoint not cached, hub unreachable": (
        ["preflight", "--models", "kobart"],
        {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"},
        "127.0.0.1 cannot be reached",
    ),
    "preflight, a --set tokenizer folder that does not exist": (
        ["preflight", "--models", "kobart", "--set", "tokenizer=./nowhere"],
        {},
        "kobart: tokenizer ./nowhere: no such folder",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_each_mistake_is_one_line_before_any_heavy_import_and_leaves_nothing(
    case: str, place: Path, moto_server, tmp_path: Path
) -> None:
    args, env, expected = CASES[case]
    run = fake_run_folder(place / "home" / "run")
    data = place / "home" / "data"
    shutil.copytree(ROOT / "src" / "dialsum" / "data" / "sample", data)
    (data / "dev.csv").write_text("fname,dialogue,summary\nd1,,a summary\n", encoding="utf-8")
    values = {"ro": str(place / "ro"), "run": str(run), "data": str(data)}
    if env == "S3":
        env = CREDENTIALS | {"DIALSUM_S3_ENDPOINT_URL": moto_server.endpoint}
    env = {k: v.format(**values) for k, v in env.items()}
    proc, _ = cli(place, [a.format(**values) for a in args], env)

    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("dialsum: error: "), proc.stderr
    assert expected.format(**values) in lines[0]
    assert proc.stdout.strip().splitlines()[-1] == "loaded:", "torch, transformers or Prefect loaded before the check"
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]+", lines[0]))
    assert named <= accepted_options(args[0]), f"{case}: names {named - accepted_options(args[0])}"
    assert list((place / "cwd").iterdir()) == [] and list((place / "ro").iterdir()) == []
