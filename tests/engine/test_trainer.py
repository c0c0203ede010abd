"""The training loop's arithmetic: per-token loss normalisation over the accumulation window, decay groups."""

import pytest
import torch

from dialsum.config import load_model_config
from dialsum.data import Example, load_splits, placeholders_in
from dialsum.engine.trainer import backward_window, fit, param_groups, total_steps
from dialsum.models import checkpoint_source, family


@pytest.fixture(scope="module")
def sample():
    return load_splits(None)


def _rows(sample) -> list[Example]:
    """One short and one long summary: micro-batches of these two rows differ several-fold in label tokens."""
    rows = sorted(sample["train"][:64], key=lambda ex: len(ex.summary))
    short, long = rows[0], rows[-1]
    long = Example(long.fname, long.dialogue, " ".join([long.summary] * 3))
    return [short, long]


def _grads(fam, model, micro) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    backward_window(fam, model, micro, amp=None)
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["tiny-bart", "tiny-qwen3"])
def test_accumulated_gradients_equal_one_batch(name, sample):
    cfg = load_model_config(name)
    fam = family(cfg)
    model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(sample["train"]))
    model.eval()  # no dropout: the two computations must see the same function
    feats = fam.build_features(cfg, tok, _rows(sample), with_labels=True)
    separate = [fam.collate(tok, [f]) for f in feats]
    counts = [fam.target_count(b) for b in separate]
    assert max(counts) >= 3 * min(counts), counts

    accumulated = _grads(fam, model, separate)  # grad_accum=2: two micro-batches
    whole = _grads(fam, model, [fam.collate(tok, feats)])  # grad_accum=1: the same rows as one batch
    assert accumulated.keys() == whole.keys() and whole
    for n in whole:
        torch.testing.assert_close(accumulated[n], whole[n], rtol=1e-4, atol=1e-7, msg=n)

    # What a per-micro-batch mean divided by grad_accum gives instead: visibly different weights.
    model.zero_grad(set_to_none=True)
    for b in separate:
        (fam.loss(model, b) / fam.target_count(b) / 2).backward()
    naive = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    worst = max(float((naive[n] - whole[n]).abs().max() / whole[n].abs().max().clamp_min(1e-12)) for n in whole)
    assert worst > 1e-2


def test_family_loss_equals_the_models_own_mean_loss(sample):
    for name in ("tiny-bart", "tiny-llama"):
        cfg = load_model_config(name)
        fam = family(cfg)
        model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(sample["train"]))
        model.eval()
        batch = fam.collate(tok, fam.build_features(cfg, tok, sample["train"][:4], with_labels=True))
        with torch.no_grad():
            ours = fam.loss(model, batch) / fam.target_count(batch)
            theirs = model(**batch).loss
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_label_smoothed_family_loss_equals_torchs_over_the_full_logits(sample, monkeypatch):
    for name in ("tiny-bart", "tiny-llama"):
        cfg = load_model_config(name)
        fam = family(cfg)
        model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(sample["train"]))
        model.eval()
        batch = fam.collate(tok, fam.build_features(cfg, tok, sample["train"][:4], with_labels=True))
        with torch.no_grad():
            logits, labels = model(**batch).logits, batch["labels"]
            if cfg.type == "causal_lm":  # position t predicts label t+1
                logits, labels = logits[:, :-1], labels[:, 1:]
            theirs = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
                label_smoothing=0.1,
            )
            ours = fam.loss(model, batch, label_smoothing=0.1)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
        assert not torch.allclose(ours, fam.loss(model, batch))  # smoothing changes the target

    seen = []  # training.label_smoothing reaches the loop's loss
    real = fam.loss
    monkeypatch.setattr(
        fam,
        "loss",
        lambda model, batch, label_smoothing=0.0: seen.append(label_smoothing) or real(model, batch, label_smoothing),
    )
    t = cfg.training.model_copy(update={"batch_size": 4, "epochs": 1, "label_smoothing": 0.2})
    fit(t, fam, model, tok, fam.build_features(cfg, tok, sample["train"][:4], with_labels=True), show_progress=False)
    assert seen == [0.2]


def test_decay_skips_biases_and_norms(sample):
    cfg = load_model_config("tiny-bart")
    model, _ = family(cfg).load(cfg, checkpoint_source(cfg), placeholders_in(sample["train"]))
    decay, keep = param_groups(model, 0.01)
    named = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.01 and keep["weight_decay"] == 0.0
    assert all(p.ndim >= 2 and "norm" not in named[id(p)] for p in decay["params"])
    kept = {named[id(p)] for p in keep["params"]}
    assert any(n.endswith(".bias") for n in kept) and any("layer_norm" in n for n in kept)
    assert len(decay["params"]) + len(keep["params"]) == sum(1 for p in model.parameters() if p.requires_grad)


def test_fit_uneven_last_window_still_steps(sample):
    cfg = load_model_config("tiny-bart")
    fam = family(cfg)
    model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(sample["train"]))
    t = cfg.training.model_copy(update={"batch_size": 4, "grad_accum": 3, "epochs": 1})
    feats = fam.build_features(cfg, tok, sample["train"][:20], with_labels=True)  # 5 batches: windows of 3 and 2
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = fit(t, fam, model, tok, feats, show_progress=False)
    assert result.steps == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())


def test_token_budget_fit_covers_every_row_once_per_epoch(sample):
    cfg = load_model_config("tiny-qwen3")
    fam = family(cfg)
    model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(sample["train"]))
    t = cfg.training.model_copy(update={"max_tokens_per_batch": 1024, "grad_accum": 2, "epochs": 2, "log_every": 2})
    feats = fam.build_features(cfg, tok, sample["train"][:16], with_labels=True)
    logged = []
    result = fit(t, fam, model, tok, feats, on_log=logged.append, show_progress=False)
    assert result.steps == total_steps(len(feats), t, None, feats)
    assert result.real_tokens == 2 * sum(len(f["input_ids"]) for f in feats)  # two whole epochs, nothing more
    assert len(result.losses) == result.steps and all(torch.isfinite(torch.tensor(result.losses)))
    assert len(logged) == -(-result.steps // 2)  # one read per logging interval, each the interval's mean
    assert logged[-1]["train/loss"] == pytest.approx(sum(result.losses[-2:]) / 2)


@pytest.mark.parametrize("world", [2, 4, 8])
def test_no_data_parallel_rank_gets_more_than_its_token_budget(world, monkeypatch):
    """The budget is per GPU: the global plan is cut so that each rank's share (every world-th row, padded to its
    longest) fits, for any world size; a plan cut on budget x world let a rank hold one row too many."""
    import random

    from dialsum.config import TrainingConfig
    from dialsum.engine import distributed, trainer

    rng = random.Random(0)
    lengths = [rng.randint(120, 900) for _ in range(499)]  # prompt + summary tokens of a real-sized dev set
    features = [{"input_ids": [0] * n} for n in lengths]
    t = TrainingConfig(max_tokens_per_batch=4096, length_group_batches=50)
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    for epoch in range(3):
        batches = trainer._batches(features, trainer.global_batch(t), epoch)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        shares = []
        for rank in range(world):
            monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
            shares += [distributed.shard(b) for b in batches]
        assert max(len(s) * max(lengths[i] for i in s) for s in shares if s) <= 4096
        used = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        assert used / (len(batches) * world * 4096) > 0.6  # global batches still fill most of world x budget
