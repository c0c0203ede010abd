"""The run setup under data parallelism: two processes that start together never race on the run's state, its
`--eval-before` bookkeeping or a checkpoint fetched from storage for `--resume`."""

from __future__ import annotations

import json
import os
import socket
import traceback
from collections import Counter
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.multiprocessing as mp

from dialsum import metric
from dialsum.data import Example
from dialsum.engine import checkpoint, distributed
from dialsum.engine.checkpoint import Checkpointer
from dialsum.pipeline import phases as run_phases
from dialsum.state.phases import Phases
from dialsum.storage import LocalStorage, publish_checkpoint

STARTS = 40
DEV = [
    Example(f"dev_{i}", f"#Person1#: 안녕하세요 {i}\n#Person2#: 네", f"#Person1#가 인사합니다 {i}") for i in range(9)
]


class Summarizer:
    """The family surface `before_phase` uses, instant, counting the dev rows this process summarized."""

    def __init__(self):
        self.rows = 0

    def build_features(self, cfg, tok, examples, with_labels):
        return [{"input_ids": [i]} for i in range(len(examples))]

    def generate(self, cfg, model, tok, features, progress=None):
        self.rows += len(features)
        return [DEV[f["input_ids"][0]].summary if f["input_ids"][0] % 3 else "다른 요약" for f in features]


def _together(fn):
    """`fn()` on this rank; ok only when it succeeded on every rank, so the ranks never part ways (a rank left
    alone in a collective would wait for the other)."""
    try:
        value, error = fn(), None
    except Exception:
        value, error = None, traceback.format_exc(limit=3)
    ok = bool(distributed.all_true(torch.tensor(error is None)))
    return ok, value, error or (None if ok else "failed on the other rank")


def _rank(rank: int, port: int, root: str) -> None:
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
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=60))  # a lost rank fails, never hangs
    distributed.init()
    root_dir, store = Path(root), LocalStorage(Path(root) / "store")
    summarizer, outcomes = Summarizer(), []
    for start in range(STARTS):
        run_id, before = f"race-{start:02d}", summarizer.rows
        torch.distributed.barrier()  # both processes start each run at the same moment
        ok, phases, error = _together(
            lambda: Phases(root_dir / "out" / run_id / ".m.state", "fingerprint", ranks=distributed)  # noqa: B023
        )
        ctx = run_phases.RunContext(
            SimpleNamespace(name="m"),
            summarizer,
            None,
            None,
            {"dev": DEV},
            run_id,
            root_dir / "out" / run_id,
            "",
            phases=phases,
        )
        if ok:
            ok, score, error = _together(lambda: run_phases.before_phase(ctx, eval_before=True))  # noqa: B023
        if ok:
            ok, path, error = _together(
                lambda: Checkpointer(phases.folder / "checkpoints", 1, 2, "fingerprint", run_id, "m", store).latest()  # noqa: B023
            )
        if ok:
            meta = json.loads((path / checkpoint.META_FILE).read_text())
            outcomes.append(
                {
                    "ok": True,
                    "score": score,
                    "step": meta["step"],
                    "rows": summarizer.rows - before,
                    "started": phases.started,
                }
            )
        else:
            outcomes.append({"ok": False, "error": error})
    (root_dir / f"rank{rank}.json").write_text(json.dumps(outcomes))
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_forty_two_process_starts_of_the_run_setup_never_race(tmp_path):
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    local = checkpoint.write(
        tmp_path / "made", checkpoint.Position(7, 1, 0, [0.5] * 7), "fingerprint", model, optimizer, scheduler, None
    )
    store = LocalStorage(tmp_path / "store")
    for start in range(STARTS):  # each run was stopped on another machine: its checkpoint is only in storage
        publish_checkpoint(local, f"race-{start:02d}", "m", local.name, store)

    mp.start_processes(_rank, args=(_free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    errors = [o["error"].strip().splitlines()[-1] for outcomes in ranks for o in outcomes if not o["ok"]]
    kinds = Counter(line.split(":")[0] for line in errors)
    assert not errors, f"{len(errors)} of {2 * STARTS} starts failed ({dict(kinds)}), e.g. {errors[0]}"
    expected = metric.score(
        Summarizer().generate(None, None, None, Summarizer().build_features(None, None, DEV, False)),
        [ex.summary for ex in DEV],
    )["score"]
    for start in range(STARTS):
        zero, one = ranks[0][start], ranks[1][start]
        assert zero["score"] == one["score"] == expected  # every rank scores the gathered summaries
        assert (zero["rows"], one["rows"]) == (5, 4)  # 9 dev rows split between the ranks, none summarized twice
        assert zero["step"] == one["step"] == 7 and not zero["started"] and not one["started"]
        state = tmp_path / "out" / f"race-{start:02d}" / ".m.state"
        assert sorted(p.name for p in state.iterdir()) == ["before.json", "checkpoints", "run.json"]
        assert json.loads((state / "before.json").read_text()) == {"score": expected}
        fetched = state / "checkpoints"
        assert [p.name for p in fetched.iterdir()] == ["step-00000007"]  # no second fetch, no staging folder left
        assert torch.load(fetched / "step-00000007" / checkpoint.STATE_FILE, weights_only=True)["model"].keys() == {
            "weight",
            "bias",
        }
