"""Same config and seed: identical saved weights; another seed: different ones (LoRA init and new rows included)."""

import pytest
import torch
from safetensors.torch import load_file

from dialsum.config import load_model_config
from dialsum.data import load_splits, placeholders_in
from dialsum.engine.trainer import fit
from dialsum.models import checkpoint_source, family


def _train_and_save(name: str, seed: int, out) -> dict[str, torch.Tensor]:
    cfg = load_model_config(name)
    cfg = cfg.model_copy(update={"training": cfg.training.model_copy(update={"seed": seed})})
    splits = load_splits(None)
    fam = family(cfg)
    torch.randn(len(out.name))  # advance the global RNG differently per call: what ran before must not matter
    model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(splits["train"] + splits["dev"]))
    feats = fam.build_features(cfg, tok, splits["train"][:32], with_labels=True)
    fit(cfg.training, fam, model, tok, feats, max_steps=2, show_progress=False)
    fam.save(model, tok, out)
    tensors = {}
    for path in sorted(out.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    assert tensors
    return tensors


@pytest.mark.parametrize("name", ["tiny-llama-qlora"])
def test_same_seed_same_weights_other_seed_other_weights(name, tmp_path):
    first = _train_and_save(name, 7, tmp_path / "a")
    again = _train_and_save(name, 7, tmp_path / "again")
    other = _train_and_save(name, 8, tmp_path / "b")
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
