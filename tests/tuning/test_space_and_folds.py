"""Search spaces (every shipped one loads against its model), the study journal's snapshot, and K-fold assignment."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import yaml

from dialsum.config import load_model_config, overlay_overrides
from dialsum.data import sample_dir
from dialsum.errors import ConfigError, DataError
from dialsum.storage import LocalStorage
from dialsum.tuning import folds as folding
from dialsum.tuning.space import load_space, to_overlay, to_overrides
from dialsum.tuning.study import StudyJournal, trial_seed

ROOT = Path(__file__).resolve().parents[2]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_shipped_space_loads_against_its_model(path: Path) -> None:
    if path.stem == "decoding":
        space = load_space(path, "kobart", prefix="generation.")
    else:
        space = load_space(path, path.stem)
    assert space.params and space.direction == "maximize"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"training.learning_rte": {"low": 1e-5, "high": 1e-3}},
            "params.training.learning_rte: unknown key `training.learning_rte`; did you mean `training.learning_rate`?",
        ),
        ({"lora.dropout": {"low": 0.0, "high": 1.0}}, "params.lora.dropout: Input should be less than 1"),
        ({"lora.r": {"low": 32, "high": 8}}, "params.lora.r: low (32) must be below high (8)"),
        ({"lora.r": {"choices": [8, 8]}}, "params.lora.r: choices repeat a value"),
        ({"training.learning_rate": {"low": 0.0, "high": 1e-3, "log": True}}, "log ranges need low > 0"),
    ],
)
def test_a_bad_key_or_range_is_one_line_naming_the_file_and_the_key(tmp_path: Path, params: dict, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"params": params}), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_space(path, "tiny-llama-qlora")
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_ranges_infer_their_type_and_overrides_round_trip_through_an_overlay() -> None:
    space = load_space(
        {
            "params": {
                "lora.r": {"low": 8, "high": 32, "step": 8},
                "training.learning_rate": {"low": "1e-5", "high": 1e-3, "log": True},
            }
        },
        "tiny-llama-qlora",
    )
    assert space.params["lora.r"].type == "int" and space.params["training.learning_rate"].type == "float"
    overrides = to_overrides({"lora.r": 16, "training.learning_rate": 3.0e-4})
    assert overrides == ["lora.r=16", "training.learning_rate=0.0003"]
    overlay = to_overlay(overrides)
    assert overlay == {"lora": {"r": 16}, "training": {"learning_rate": 3.0e-4}}
    assert load_model_config("tiny-llama-qlora", overrides).lora.r == 16


def test_decoding_spaces_take_only_generation_keys() -> None:
    with pytest.raises(ConfigError, match="only generation.* keys"):
        load_space({"params": {"training.epochs": {"choices": [1, 2]}}}, "tiny-bart", prefix="generation.")


def test_the_snapshot_is_the_copy_of_record_and_a_longer_local_journal_is_kept(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "store")
    space = load_space({"params": {"training.learning_rate": {"low": 1e-4, "high": 1e-2}}}, "tiny-bart")
    first = StudyJournal("s1", store, tmp_path / "a")
    assert not first.restore()
    first.check_space(space)
    study = first.open(space, seed=1)
    study.enqueue_trial({"training.learning_rate": 1e-3})
    first.snapshot()
    again = StudyJournal("s1", store, tmp_path / "b")  # another machine
    assert again.restore() and again.path.read_bytes() == first.path.read_bytes()
    assert len(again.open(again.check_space(None), seed=1).trials) == 1
    other = load_space({"params": {"training.learning_rate": {"low": 1e-5, "high": 1e-2}}}, "tiny-bart")
    with pytest.raises(ConfigError, match="another search space"):
        again.check_space(other)
    study.enqueue_trial({"training.learning_rate": 2e-3})  # written locally after the last snapshot
    assert first.restore() and len(first.open(space, seed=1).trials) == 2
    assert trial_seed(0, 5) == trial_seed(0, 5) != trial_seed(0, 6)


def _write_train(path: Path, groups: bool) -> Path:
    rows = list(csv.DictReader(open(sample_dir() / "train.csv", encoding="utf-8")))[:60]
    header = list(rows[0]) + (["group"] if groups else [])
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({**row, **({"group": f"g{i // 4}"} if groups else {})})
    return path


def test_folds_are_disjoint_cover_every_row_and_are_byte_identical_for_a_seed(tmp_path: Path) -> None:
    train = sample_dir() / "train.csv"
    folds = folding.assign(train, 5, seed=7)
    fnames = [row["fname"] for row in csv.DictReader(open(train, encoding="utf-8"))]
    members = [set(folds.members(i)) for i in range(5)]
    assert set().union(*members) == set(fnames) and sum(map(len, members)) == len(fnames)
    assert max(folds.sizes()) - min(folds.sizes()) <= 1
    assert folding.assign(train, 5, seed=7).to_json() == folds.to_json()
    assert folding.assign(train, 5, seed=8).to_json() != folds.to_json()
    assert folding.Folds.from_json(folds.to_json()) == folds
    # stratified: every fold holds short and long dialogues alike
    lengths = {
        ex: len(d) for ex, d in ((r["fname"], r["dialogue"]) for r in csv.DictReader(open(train, encoding="utf-8")))
    }
    means = [sum(lengths[f] for f in m) / len(m) for m in members]
    assert max(means) / min(means) < 1.1


def test_a_group_never_straddles_two_folds(tmp_path: Path) -> None:
    train = _write_train(tmp_path / "train.csv", groups=True)
    folds = folding.assign(train, 3, seed=0)
    rows = list(csv.DictReader(open(train, encoding="utf-8")))
    by_group: dict[str, set[int]] = {}
    for row in rows:
        by_group.setdefault(row["group"], set()).add(folds.assignment[row["fname"]])
    assert all(len(f) == 1 for f in by_group.values()) and folds.group_column == "group"


def test_fold_data_holds_the_other_folds_the_real_dev_and_the_held_out_fold_then_test(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _write_train(data / "train.csv", groups=False)
    for split in ("dev", "test"):
        (data / f"{split}.csv").write_bytes((sample_dir() / f"{split}.csv").read_bytes())
    folds = folding.assign(data / "train.csv", 3, seed=0)
    files = folding.fold_data(data, folds, 1)
    train = [r["fname"] for r in csv.DictReader(io.StringIO(files["train.csv"].decode()))]
    test = [r["fname"] for r in csv.DictReader(io.StringIO(files["test.csv"].decode()))]
    assert set(train) == set(folds.members(0)) | set(folds.members(2))
    assert test[: len(folds.members(1))] == folds.members(1) and test[len(folds.members(1)) :][0].startswith("test")
    assert files["dev.csv"] == (data / "dev.csv").read_bytes()
    with pytest.raises(DataError, match="cannot fill 61 folds"):
        folding.assign(data / "train.csv", 61, seed=0)


def test_an_overlay_file_reproduces_the_trial_overrides(tmp_path: Path) -> None:
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(to_overlay(["training.learning_rate=0.002", "training.warmup_steps=0.1"])))
    assert sorted(overlay_overrides(path)) == ["training.learning_rate=0.002", "training.warmup_steps=0.1"]


def test_a_study_keeps_its_model_and_overrides(tmp_path: Path) -> None:
    journal = StudyJournal("s2", LocalStorage(tmp_path / "store"), tmp_path / "a")
    assert journal.check_settings("tiny-bart", ["training.epochs=2"]) == ["training.epochs=2"]
    assert journal.check_settings("tiny-bart", []) == ["training.epochs=2"]  # continuing without them
    with pytest.raises(ConfigError, match="started for tiny-bart with overrides"):
        journal.check_settings("tiny-bart", ["training.epochs=3"])
    with pytest.raises(ConfigError, match="use a new study name"):
        journal.check_settings("tiny-llama", [])
