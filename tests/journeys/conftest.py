"""The real profiles' journeys: stand-in checkpoints of the real shapes (built once per session), a data folder cut
from the real competition files, one S3 bucket, and the table of profile x journey step printed at the end."""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path

import pytest
from support.s3_server import CREDENTIALS, s3_client

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
REFERENCE = {
    "kobart": "kobart-tokenizer",
    "llama-3.2-korean-3b": "llama-3.2-korean-bllossom-3b",
    "qwen3-4b": "qwen3-4b-instruct-2507",
}
TRAIN_ROWS, DEV_ROWS, TEST_ROWS = 32, 4, 4
RESULTS: dict[tuple[str, str], tuple[str, float]] = {}


def pytest_runtest_logreport(report) -> None:
    """Record each journey step's outcome and time, by profile (`*`: one step for all profiles), for the table."""
    if "journeys/" not in report.nodeid:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        name = report.nodeid.split("::")[-1]
        step = name.split("[")[0].removeprefix("test_")
        profile = name.split("[")[-1].rstrip("]") if "[" in name else "*"
        RESULTS[(profile, step)] = (report.outcome, report.duration)


def pytest_terminal_summary(terminalreporter) -> None:
    if not RESULTS:
        return
    steps = list(dict.fromkeys(step for _, step in RESULTS))
    profiles = [p for p in dict.fromkeys(profile for profile, _ in RESULTS) if p != "*"]
    terminalreporter.section("profile journeys")
    terminalreporter.write_line("| profile | " + " | ".join(steps) + " |")
    terminalreporter.write_line("|---" * (len(steps) + 1) + "|")
    for profile in profiles:
        cells = []
        for step in steps:
            own, shared = RESULTS.get((profile, step)), RESULTS.get(("*", step))
            cells.append(
                f"{own[0]} {own[1]:.1f} s" if own else f"{shared[0]} (all three: {shared[1]:.1f} s)" if shared else "-"
            )
        terminalreporter.write_line(f"| {profile} | " + " | ".join(cells) + " |")
    total = sum(duration for _, duration in RESULTS.values())
    terminalreporter.write_line(f"journey steps: {total:.1f} s in all")


@pytest.fixture(scope="session")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not present: the real tokenizers, templates and competition data are needed")
    return SHARED


@pytest.fixture(scope="session")
def journey_data(shared, tmp_path_factory) -> Path:
    """train: the first 32 dev rows; dev: the 4 later rows with the shortest summaries; test: the first 4 test rows."""
    folder = tmp_path_factory.mktemp("journey-data")

    def rows(name: str) -> list[dict]:
        with open(shared / "competition" / name, encoding="utf-8", newline="") as fh:
            return list(csv.DictReader(fh))

    dev = rows("dev.csv")
    picks = {
        "train": dev[:TRAIN_ROWS],
        "dev": sorted(dev[TRAIN_ROWS:], key=lambda r: len(r["summary"]))[:DEV_ROWS],
        "test": rows("test.csv")[:TEST_ROWS],
    }
    for split, chosen in picks.items():
        columns = ["fname", "dialogue"] + (["summary"] if split != "test" else [])
        with open(folder / f"{split}.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(chosen)
    return folder


@pytest.fixture(scope="session")
def standins(shared, tmp_path_factory):
    """`standins(profile)`: the folder of that profile's stand-in checkpoint, built on first use."""
    from dialsum.data import read_split
    from dialsum.models import standin

    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("standins")

    def build(profile: str) -> Path:
        if profile not in built:
            reference, folder = shared / "reference" / REFERENCE[profile], root / profile
            if profile == "kobart":
                standin.kobart(reference, folder)
            elif profile == "qwen3-4b":
                standin.qwen3(reference, folder)
            else:  # the stand-in tokenizer learns its pieces from the competition texts
                texts = [
                    text
                    for split in ("dev", "test")
                    for ex in read_split(shared / "competition" / f"{split}.csv", split)
                    for text in (ex.dialogue, ex.summary)
                    if text
                ]
                standin.llama3(reference, texts, folder)
            built[profile] = folder
        return built[profile]

    return build


@pytest.fixture(scope="module")
def journey_bucket(moto_server) -> str:
    """One bucket for the module, with the S3 settings in the environment (for this process and the ones it starts)."""
    from dialsum.settings import get_settings

    patch = pytest.MonkeyPatch()
    for name, value in CREDENTIALS.items():
        patch.setenv(name, value)
    patch.setenv("DIALSUM_S3_ENDPOINT_URL", moto_server.endpoint)
    get_settings.cache_clear()
    name = f"journey-{uuid.uuid4().hex[:12]}"
    s3_client(moto_server.endpoint).create_bucket(Bucket=name)
    yield name
    patch.undo()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def fresh_env(journey_bucket) -> dict[str, str]:
    """The environment of a new `dialsum` process: this session's folders, settings and S3 endpoint."""
    return dict(os.environ)
