from pathlib import Path

import pytest

from dialsum.settings import get_settings
from dialsum.tracking import start_tracking


@pytest.mark.parametrize("unset", ["absent", "blank"])  # blank: what docker compose passes for an empty .env entry
def test_wandb_offline_without_key_and_no_secret_in_logged_config(tmp_path, monkeypatch, unset):
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        if unset == "blank":
            monkeypatch.setenv(name, "")
        else:
            monkeypatch.delenv(name, raising=False)
    import wandb

    wandb.teardown()  # W&B reads its environment once per process: make it read this one
    monkeypatch.setenv("HF_TOKEN", "hf_supersecret123")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-supersecret456")
    get_settings.cache_clear()
    assert get_settings().resolved_wandb_mode() == "offline"
    assert "supersecret" not in repr(get_settings())
    tracker = start_tracking({"name": "tiny-bart", "lr": 0.1}, "tiny-bart-r1", "group-r1", tmp_path)
    assert tracker.run is not None and tracker.run.group == "group-r1"
    tracker.log({"train/loss": 1.0})
    tracker.finish({"dev_score": 50.0})
    files = [p for p in Path(tmp_path).rglob("*") if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        assert b"supersecret" not in data, path


def test_the_train_all_report_goes_to_wandb_in_the_run_group(tmp_path, monkeypatch):
    from dialsum.tracking import publish_report

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("DIALSUM_OUTPUT_DIR", str(tmp_path))
    get_settings.cache_clear()
    summary = {
        "status": "trained",
        "rows": [{"model": "tiny-bart", "status": "completed", "dev_score": 12.5, "seconds": 3.0}],
        "ensemble": {"dev_score": 12.5},
        "promotion": {"promoted": False, "reason": "does not beat 13.00"},
        "plot": "file:///x/report.png",
    }
    publish_report("r-7", "# train-all `r-7`\n**Decision: not promoted.**", summary)
    import wandb

    wandb.teardown()  # the W&B service writes the offline file on its own schedule; shutting it down flushes it
    runs = list((tmp_path / "r-7" / "wandb").rglob("offline-run-*"))
    assert len(runs) == 1
    stored = b"".join(p.read_bytes() for p in runs[0].rglob("*") if p.is_file())
    assert b"train-all-r-7" in stored and b"does not beat 13.00" in stored
