"""Data-parallel training: two CPU processes over gloo train the same weights as one process with twice the batch."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dialsum import distributed
from dialsum.config import load_model_config
from dialsum.data import load_splits, placeholders_in
from dialsum.models import checkpoint_source, family
from dialsum.trainer import fit

ROWS = 17  # global micro-batches of 8, 8 and 1 rows: one rank gets no row of the last


def _train(batch_size: int) -> dict[str, torch.Tensor]:
    cfg = load_model_config("tiny-llama")
    splits = load_splits(None)
    fam = family(cfg)
    model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(splits["train"]))
    feats = fam.build_features(cfg, tok, splits["train"][:ROWS], with_labels=True)
    t = cfg.training.model_copy(update={"batch_size": batch_size, "grad_accum": 2, "epochs": 2, "warmup_steps": 0,
                                        "learning_rate": 1e-3})
    result = fit(t, fam, model, tok, feats, show_progress=False)
    assert result.steps == 4
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    distributed.init()
    assert distributed.world_size() == 2 and distributed.rank() == rank
    weights = _train(batch_size=4)
    if distributed.is_main():
        torch.save(weights, out)
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_process_with_twice_the_batch(tmp_path):
    cfg = load_model_config("tiny-llama")
    checkpoint_source(cfg)  # build the tiny model once, before the ranks start
    out = tmp_path / "rank0.pt"
    mp.start_processes(_rank, args=(_free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    parallel = torch.load(out)
    single = _train(batch_size=8)
    assert parallel.keys() == single.keys()
    moved = [n for n in single if not torch.equal(single[n], parallel[n])]
    assert moved, "identical to the bit: suspicious for two processes"
    for n in single:
        torch.testing.assert_close(parallel[n], single[n], rtol=1e-4, atol=1e-5, msg=n)


def test_shard_and_launch_command():
    assert distributed.shard([5, 6, 7]) == [5, 6, 7] and distributed.world_size() == 1
    cmd = distributed.launch_command(["train", "--models", "kobart"], 2)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--num_processes" in cmd
    assert cmd[-5:] == ["-m", "dialsum.cli", "train", "--models", "kobart"]
    with pytest.raises(Exception, match="at least 2"):
        distributed.launch_command(["train"], 1)
