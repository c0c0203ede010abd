"""Pruning: the training a sweep saves by stopping bad trials early, on learning curves with a known optimum.

No training: each trial's curve is synthetic. The final dev score of a config is a smooth function of its
learning rate (log scale), warmup and batch size with a known optimum (`PEAK` at `LR_STAR`, `WARMUP_STAR`, batch
16); its curve rises with the share of its planned training done, with a config-specific speed and a little seeded
noise. Trials vary the batch size (8, 16 or 32), so the same planned training is 40, 20 or 10 evaluations (one every
2 optimizer steps): raw step numbers mean different progress in different trials. Each evaluation records its
`progress`, and the loop reports the curve to the pruner at equal progress (`tuning.loop.progress_points`). The
real study loop (`tuning.loop.StudyLoop`: TPE with the constant liar, seeded per trial, its random start a third of
the budget; 4 slots) runs the same budget per seed without pruning (the baseline), with the median pruner, and
with the median pruner on raw step numbers (the curves without `progress`, as before), and a stand-in executor
counts the training each trial ran (a pruned child runs one more evaluation after the STOP marker, as a real
child does).

ours = training run with pruning at equal progress, baseline = without pruning, both in trials' planned training
(the sum over trials of the share each ran); the goal is ratio <= 0.70 (>= 30% saved) with the best value found
within 0.5% of the unpruned sweep's, for every seed. The best value is the known objective at the
best trial's parameters (`best_true`); the last measured value (`best_value`, with the curve's noise of about
0.4% of the score) is reported beside it.

    python bench/pruning.py            # writes bench/results/pruning.json
    python bench/pruning.py --smoke    # a few seconds; writes its JSON to a temp folder
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result  # noqa: E402

from dialsum.storage import LocalStorage  # noqa: E402
from dialsum.tuning.loop import COMPLETED, RUNNING, Status, StudyLoop, TrialRun  # noqa: E402
from dialsum.tuning.space import SearchSpace  # noqa: E402
from dialsum.tuning.study import StudyJournal  # noqa: E402

PEAK, LR_STAR, WARMUP_STAR = 40.0, 3e-4, 0.06
SPACE = {
    "objective": "dev_score",
    "params": {
        "training.learning_rate": {"low": 1e-5, "high": 1e-2, "log": True},
        "training.warmup_steps": {"low": 0.0, "high": 0.2},
        "training.batch_size": {"choices": [8, 16, 32]},
    },
}
PRUNER = {"type": "median", "startup_trials": 5, "warmup_steps": 20}  # no pruning before 20% of the training
RAW_PRUNER = {"type": "median", "startup_trials": 5, "warmup_steps": 8}  # raw steps: 4 evaluations at batch 16


def final_value(params: dict[str, float]) -> float:
    """The known objective: PEAK at (LR_STAR, WARMUP_STAR, batch 16), falling off quadratically in log10(lr),
    warmup and log2(batch / 16)."""
    lr, warmup = params["training.learning_rate"], params["training.warmup_steps"]
    batch = params.get("training.batch_size", 16)
    return (
        PEAK
        - 6.0 * (math.log10(lr) - math.log10(LR_STAR)) ** 2
        - 150.0 * (warmup - WARMUP_STAR) ** 2
        - 1.5 * math.log2(batch / 16) ** 2
    )


class Curves:
    """Synthetic children: one evaluation (2 optimizer steps) per poll, a planned number of evaluations that depends
    on the batch size, a STOP honoured at the next evaluation. `progress`: whether curves record it."""

    def __init__(self, steps: int, seed: int, progress: bool = True) -> None:
        self.steps, self.seed, self.progress = steps, seed, progress
        self.slots = [f"gpu-{i}" for i in range(4)]
        self.evals: dict[str, int] = {}
        self.params: dict[str, dict[str, float]] = {}
        self.stop_at: dict[str, int] = {}

    def planned(self, run_id: str) -> int:
        """Evaluations in the planned training: `steps` at batch 16, twice as many at batch 8."""
        return max(1, self.steps * 16 // int(self.params[run_id].get("training.batch_size", 16)))

    def _total(self, run_id: str) -> int:
        planned = self.planned(run_id)
        return min(planned, self.stop_at[run_id] + 1) if run_id in self.stop_at else planned

    def value(self, run_id: str, k: int) -> float:
        params = self.params[run_id]
        speed = 0.25 + 0.5 * abs(math.log10(params["training.learning_rate"]) + 4.0) / 3.0
        noise = random.Random(f"{self.seed}:{run_id}:{k}").gauss(0.0, 0.15)
        share = k / self.planned(run_id)
        return final_value(params) * (1.0 - math.exp(-speed * self.steps * share)) + noise

    def launch(self, run: TrialRun) -> str:
        self.evals.setdefault(run.run_id, 0)
        self.params.setdefault(run.run_id, dict(run.params))
        return run.run_id

    def status(self, handle: str) -> Status:
        if self.evals[handle] < self._total(handle):
            self.evals[handle] += 1
            return Status(RUNNING)
        return Status(COMPLETED, seconds=float(self.evals[handle]))

    def curve(self, run: TrialRun) -> list[dict[str, Any]]:
        planned = self.planned(run.run_id)
        return [
            {"step": 2 * k, "dev_score": self.value(run.run_id, k)}
            | ({"progress": round(k / planned, 4)} if self.progress else {})
            for k in range(1, self.evals[run.run_id] + 1)
        ]

    def result(self, run: TrialRun) -> dict[str, Any]:
        k = self.evals[run.run_id]
        value = self.value(run.run_id, k)
        return {
            "dev": {"score": value},
            "dev_selection": {"score": value},
            "train_steps": 2 * k,
            "training": {"stop_requested": run.run_id in self.stop_at},
        }

    def stop(self, run: TrialRun, reason: str) -> None:
        self.stop_at[run.run_id] = self.evals[run.run_id]

    def trained(self) -> float:
        """The training run, in trials: the sum of each trial's share of its planned training."""
        return sum(self.evals[r] / self.planned(r) for r in self.evals)


def sweep(
    trials: int,
    steps: int,
    seed: int,
    pruner: dict[str, Any],
    folder: Path,
    progress: bool = True,
    label: str | None = None,
) -> dict[str, Any]:
    space = SearchSpace.model_validate({**SPACE, "pruner": pruner})
    label = label or pruner["type"]
    journal = StudyJournal(f"bench-{label}-{seed}", LocalStorage(folder / "store"), folder / f"{label}-{seed}")
    journal.restore()
    study = journal.open(space, seed)
    curves = Curves(steps, seed, progress)
    StudyLoop(study, space, curves, budget=trials, parallel=4, seed=seed, run_prefix="b", poll_seconds=0).run()
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = max(completed, key=lambda t: t.value)
    return {
        "trained": round(curves.trained(), 3),
        "steps": sum(2 * e for e in curves.evals.values()),
        "best_value": round(best.value, 4),
        "best_true": round(final_value(best.params), 4),
        "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
        "trials": len(study.trials),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run; results go to a temp folder")
    args = parser.parse_args()
    trials, steps, seeds = (12, 8, [0]) if args.smoke else (40, 20, [0, 1, 2, 3, 4])
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as tmp:
        for seed in seeds:
            full = sweep(trials, steps, seed, {"type": "none"}, Path(tmp))
            pruned = sweep(trials, steps, seed, PRUNER, Path(tmp))
            raw = sweep(trials, steps, seed, RAW_PRUNER, Path(tmp), progress=False, label="raw")
            gap = abs(pruned["best_true"] - full["best_true"]) / abs(full["best_true"])
            raw_gap = abs(raw["best_true"] - full["best_true"]) / abs(full["best_true"])
            measured = abs(pruned["best_value"] - full["best_value"]) / abs(full["best_value"])
            runs.append(
                {
                    "seed": seed,
                    "unpruned": full,
                    "pruned": pruned,
                    "pruned_on_raw_steps": raw,
                    "best_gap_percent": round(100 * gap, 3),
                    "raw_steps_best_gap_percent": round(100 * raw_gap, 3),
                    "measured_best_gap_percent": round(100 * measured, 3),
                }
            )
        ours, baseline = sum(r["pruned"]["trained"] for r in runs), sum(r["unpruned"]["trained"] for r in runs)
        raw = sum(r["pruned_on_raw_steps"]["trained"] for r in runs)
        out_dir = Path(tmp) / "results" if args.smoke else None
        write_result(
            "pruning",
            "trials of planned training run",
            round(ours, 3),
            round(baseline, 3),
            round(ours / baseline, 4),
            "ratio <= 0.70 and every seed's best (known objective at the best trial) within 0.5% "
            "of the unpruned sweep's",
            {
                "trials_per_sweep": trials,
                "evaluations_per_trial_at_batch_16": steps,
                "batch_sizes": [8, 16, 32],
                "parallel": 4,
                "seeds": seeds,
                "pruner": PRUNER,
                "compared_at": "equal progress (every 5% of the planned training)",
                "sampler": "TPE, constant liar, seeded per trial, random start a third of the budget",
                "known_optimum": PEAK,
                "steps_saved_percent": round(100 * (1 - ours / baseline), 1),
                "max_best_gap_percent": max(r["best_gap_percent"] for r in runs),
                "raw_step_pruner": {
                    "pruner": RAW_PRUNER,
                    "saved_percent": round(100 * (1 - raw / baseline), 1),
                    "max_best_gap_percent": max(r["raw_steps_best_gap_percent"] for r in runs),
                },
                "runs": runs,
                "smoke": args.smoke,
            },
            out_dir=out_dir,
        )


if __name__ == "__main__":
    main()
