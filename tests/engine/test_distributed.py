"""Data-parallel training: two CPU processes over gloo train the same weights as one process with twice the batch,
and split the evaluation between them."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from dialsum.config import load_model_config
from dialsum.data import load_splits, placeholders_in
from dialsum.engine import distributed
from dialsum.engine.evaluation import Evaluator
from dialsum.engine.trainer import fit
from dialsum.models import checkpoint_source, family

ROWS = 17  # global micro-batches of 8, 8 and 1 rows: one rank gets no row of the last
EVAL_ROWS = 6  # dev rows summarized at each epoch end (two epochs) and used for the dev loss after every step


class Counting:
    """The family with counts of the rows it was asked to summarize and the dev-loss rows it scored."""

    def __init__(self, fam):
        self.fam, self.generated, self.loss_rows = fam, 0, 0

    def __getattr__(self, name):
        return getattr(self.fam, name)

    def generate(self, cfg, model, tok, features, progress=None):
        self.generated += len(features)
        return self.fam.generate(cfg, model, tok, features, progress)

    def loss(self, model, batch, label_smoothing=0.0):
        self.loss_rows += 0 if model.training else batch["input_ids"].shape[0]
        return self.fam.loss(model, batch)


def _train(batch_size: int) -> tuple[dict[str, torch.Tensor], dict, Counting]:
    cfg = load_model_config("tiny-llama")
    splits = load_splits(None)
    fam = family(cfg)
    model, tok = fam.load(cfg, checkpoint_source(cfg), placeholders_in(splits["train"]))
    feats = fam.build_features(cfg, tok, splits["train"][:ROWS], with_labels=True)
    t = cfg.training.model_copy(
        update={
            "batch_size": batch_size,
            "grad_accum": 2,
            "epochs": 2,
            "warmup_steps": 0,
            "learning_rate": 1e-3,
            "eval_every": 1,
            "eval_loss_rows": EVAL_ROWS,
            "eval_score_rows": EVAL_ROWS,
            "best_metric": "dev_loss",
        }
    )
    counting = Counting(fam)
    evaluator = Evaluator(cfg.model_copy(update={"training": t}), counting, tok, splits["dev"])
    result = fit(t, fam, model, tok, feats, show_progress=False, evaluation=evaluator)
    assert result.steps == 4
    return {n: p.detach().clone() for n, p in model.named_parameters()}, result.evaluation, counting


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE="2",
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    distributed.init()
    assert distributed.world_size() == 2 and distributed.rank() == rank
    weights, evaluation, counting = _train(batch_size=4)
    work = {"generated": counting.generated, "loss_rows": counting.loss_rows, "evaluation": evaluation}
    torch.save({"weights": weights, **work} if distributed.is_main() else work, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_equal_one_process_with_twice_the_batch_and_split_evaluation(tmp_path):
    cfg = load_model_config("tiny-llama")
    checkpoint_source(cfg)  # build the tiny model once, before the ranks start
    out = tmp_path / "rank"
    mp.start_processes(_rank, args=(_free_port(), str(out)), nprocs=2, join=True, start_method="spawn")
    ranks = [torch.load(f"{out}.{r}", weights_only=False) for r in (0, 1)]
    single, evaluation, counting = _train(batch_size=8)
    parallel = ranks[0]["weights"]
    assert parallel.keys() == single.keys()
    moved = [n for n in single if not torch.equal(single[n], parallel[n])]
    assert moved, "identical to the bit: suspicious for two processes"
    for n in single:
        torch.testing.assert_close(parallel[n], single[n], rtol=1e-4, atol=1e-5, msg=n)

    # Evaluation: each rank summarizes and scores its share of the dev rows; every rank gets the whole result.
    assert counting.generated == 2 * EVAL_ROWS  # two epoch ends, all rows in one process
    assert [r["generated"] for r in ranks] == [EVAL_ROWS, EVAL_ROWS]  # rows 0, 2, 4 | 1, 3, 5 each epoch end
    assert counting.loss_rows == 4 * EVAL_ROWS  # a dev loss after each of the 4 steps
    assert all(0 < r["loss_rows"] < counting.loss_rows for r in ranks)
    assert ranks[0]["loss_rows"] + ranks[1]["loss_rows"] == counting.loss_rows
    assert ranks[0]["evaluation"] == ranks[1]["evaluation"]
    curve, parallel_curve = evaluation["curve"], ranks[0]["evaluation"]["curve"]
    assert [r["step"] for r in parallel_curve] == [r["step"] for r in curve] == [1, 2, 3, 4]
    for one, two in zip(curve, parallel_curve):
        assert two["dev_loss"] == pytest.approx(one["dev_loss"], rel=1e-4)
        assert two.get("dev_score") == pytest.approx(one.get("dev_score"), abs=1e-9)
    assert sum("dev_score" in r for r in curve) == 2


def test_gather_shards_restores_row_order_over_uneven_ranks(monkeypatch):
    rows, world = list("abcdefg"), 3  # 7 rows over 3 ranks: shards of 3, 2 and 2
    shards = [rows[r::world] for r in range(world)]
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    monkeypatch.setattr(distributed.dist, "all_gather_object", lambda out, mine: out.__setitem__(slice(None), shards))
    assert distributed.gather_shards(shards[1]) == rows


def test_shard_and_launch_command():
    assert distributed.shard([5, 6, 7]) == [5, 6, 7] and distributed.world_size() == 1
    cmd = distributed.launch_command(["train", "--models", "kobart"], 2, "/tmp/logs")
    if torch.cuda.is_available():
        assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
        assert cmd[cmd.index("--log_dir") + 1] == "/tmp/logs"
    else:  # accelerate's CPU launcher starts a single process
        assert cmd[1:3] == ["-m", "torch.distributed.run"] and cmd[cmd.index("--nproc-per-node") + 1] == "2"
        assert cmd[cmd.index("--log-dir") + 1] == "/tmp/logs"
    assert cmd[-5:] == ["-m", "dialsum.cli", "train", "--models", "kobart"]
    with pytest.raises(Exception, match="at least 2"):
        distributed.launch_command(["train"], 1, "/tmp/logs")


def test_the_ranks_get_omp_num_threads_so_the_launcher_prints_no_banner(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(distributed.os, "cpu_count", lambda: 8)
    assert distributed.launch_env(2)["OMP_NUM_THREADS"] == "4"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert distributed.launch_env(2)["OMP_NUM_THREADS"] == "3"  # a user's choice stays


def test_only_rank_0_prints_our_log_lines(monkeypatch, capsys):
    import logging

    from dialsum import console

    log = logging.getLogger("dialsum")
    try:
        for rank, printed in (("1", False), ("0", True)):
            for handler in log.handlers:
                handler.setLevel(logging.NOTSET)
            monkeypatch.setenv("RANK", rank)
            console.configure(verbose=False)  # its handler writes to pytest's captured sys.stderr of the moment
            log.info("loss 1.23 at step 4")
            log.warning("a warning every rank says")
            err = capsys.readouterr().err
            assert ("loss 1.23 at step 4" in err) is printed and "a warning every rank says" in err
    finally:
        for handler in log.handlers:
            handler.setLevel(logging.NOTSET)


def test_a_child_given_several_gpus_trains_data_parallel(monkeypatch, tmp_path):
    """train-model with gpus > 1 runs `dialsum train` once per GPU through the launcher, then reads rank 0's run."""
    import json

    from dialsum import pipeline
    from dialsum.engine import distributed
    from dialsum.errors import DialsumError
    from dialsum.settings import get_settings

    launched = []

    def fake_launch(argv, processes):
        launched.append((list(argv), processes))
        run = get_settings().output_dir / "dp-run" / "tiny-bart"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"dev": {"score": 50.0}}))
        return 0

    monkeypatch.setattr(distributed, "launch", fake_launch)
    result = pipeline.run_model_on_gpus("tiny-bart", 2, run_id="dp-run", debug=True, storage_url=str(tmp_path))
    ((argv, processes),) = launched
    assert processes == 2 and argv[:5] == ["train", "--models", "tiny-bart", "--run-id", "dp-run"]
    assert "--debug" in argv and argv[argv.index("--storage") + 1] == str(tmp_path)
    assert result.metrics["dev"]["score"] == 50.0 and result.run_dir.name == "tiny-bart"

    monkeypatch.setattr(distributed, "launch", lambda argv, processes: 3)
    with pytest.raises(DialsumError, match="exited with code 3"):
        pipeline.run_model_on_gpus("tiny-bart", 2, run_id="dp-run-2")
