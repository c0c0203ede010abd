from pathlib import Path

from dialsum.settings import get_settings
from dialsum.tracking import start_tracking


def test_wandb_offline_without_key_and_no_secret_in_logged_config(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
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
