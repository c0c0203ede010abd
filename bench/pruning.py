"""Pruning: trial steps a sweep saves by stopping bad trials early, on learning curves with a known optimum.

No training: each trial's curve is synthetic. The final dev score of a config is a smooth function of its
learning rate (log scale) and warmup with a known optimum (`PEAK` at `LR_STAR`, `WARMUP_STAR`); its curve rises
towards that final value over `STEPS` evaluations with a config-specific speed and a little seeded noise. The
real study loop (`tuning.loop.StudyLoop`: TPE with the constant liar, seeded per trial; 4 slots) runs the same
budget twice per seed, without pruning (the baseline) and with the median pruner that the shipped spaces use,
and a stand-in executor counts the evaluation steps each trial ran (a pruned child runs one more evaluation
after the STOP marker, as a real child does).

ours = trial steps run with pruning, baseline = without; the goal is ratio <= 0.70 (>= 30% saved) with the best
value found within 0.5% of the unpruned sweep's, for every seed. The best value is the known objective at the
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
SPACE = {"objective": "dev_score",
         "params": {"training.learning_rate": {"low": 1e-5, "high": 1e-2, "log": True},
                    "training.warmup_steps": {"low": 0.0, "high": 0.2}}}
PRUNER = {"type": "median", "startup_trials": 5, "warmup_steps": 4}


def final_value(params: dict[str, float]) -> float:
    """The known objective: PEAK at (LR_STAR, WARMUP_STAR), falling off quadratically in log10(lr) and warmup."""
    lr, warmup = params["training.learning_rate"], params["training.warmup_steps"]
    return PEAK - 6.0 * (math.log10(lr) - math.log10(LR_STAR)) ** 2 - 150.0 * (warmup - WARMUP_STAR) ** 2


class Curves:
    """Synthetic children: one evaluation per poll, `steps` evaluations, a STOP honoured at the next evaluation."""

    def __init__(self, steps: int, seed: int) -> None:
        self.steps, self.seed = steps, seed
        self.slots = [f"gpu-{i}" for i in range(4)]
        self.evals: dict[str, int] = {}
        self.params: dict[str, dict[str, float]] = {}
        self.stop_at: dict[str, int] = {}

    def _total(self, run_id: str) -> int:
        return min(self.steps, self.stop_at[run_id] + 1) if run_id in self.stop_at else self.steps

    def value(self, run_id: str, step: int) -> float:
        params = self.params[run_id]
        speed = 0.25 + 0.5 * abs(math.log10(params["training.learning_rate"]) + 4.0) / 3.0
        noise = random.Random(f"{self.seed}:{run_id}:{step}").gauss(0.0, 0.15)
        return final_value(params) * (1.0 - math.exp(-speed * step)) + noise

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
        return [{"step": s, "dev_score": self.value(run.run_id, s)} for s in range(1, self.evals[run.run_id] + 1)]

    def result(self, run: TrialRun) -> dict[str, Any]:
        steps = self.evals[run.run_id]
        value = self.value(run.run_id, steps)
        return {"dev": {"score": value}, "dev_selection": {"score": value}, "train_steps": steps,
                "training": {"stop_requested": run.run_id in self.stop_at}}

    def stop(self, run: TrialRun, reason: str) -> None:
        self.stop_at[run.run_id] = self.evals[run.run_id]


def sweep(trials: int, steps: int, seed: int, pruner: dict[str, Any], folder: Path) -> dict[str, Any]:
    space = SearchSpace.model_validate({**SPACE, "pruner": pruner})
    journal = StudyJournal(f"bench-{pruner['type']}-{seed}", LocalStorage(folder / "store"), folder / f"{pruner['type']}-{seed}")
    journal.restore()
    study = journal.open(space, seed)
    curves = Curves(steps, seed)
    StudyLoop(study, space, curves, budget=trials, parallel=4, seed=seed, run_prefix="b", poll_seconds=0).run()
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = max(completed, key=lambda t: t.value)
    return {"steps": sum(curves.evals.values()), "best_value": round(best.value, 4),
            "best_true": round(final_value(best.params), 4), "pruned": sum(t.state.name == "PRUNED" for t in study.trials),
            "trials": len(study.trials)}


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
            gap = abs(pruned["best_true"] - full["best_true"]) / abs(full["best_true"])
            measured = abs(pruned["best_value"] - full["best_value"]) / abs(full["best_value"])
            runs.append({"seed": seed, "unpruned": full, "pruned": pruned, "best_gap_percent": round(100 * gap, 3),
                         "measured_best_gap_percent": round(100 * measured, 3)})
        ours, baseline = sum(r["pruned"]["steps"] for r in runs), sum(r["unpruned"]["steps"] for r in runs)
        out_dir = Path(tmp) / "results" if args.smoke else None
        write_result(
            "pruning", "trial evaluation steps", ours, baseline, round(ours / baseline, 4),
            "ratio <= 0.70 and every seed's best (known objective at the best trial) within 0.5% of the unpruned sweep's",
            {"trials_per_sweep": trials, "evaluations_per_trial": steps, "parallel": 4, "seeds": seeds,
             "pruner": PRUNER, "sampler": "TPE, constant liar, seeded per trial", "known_optimum": PEAK,
             "steps_saved_percent": round(100 * (1 - ours / baseline), 1),
             "max_best_gap_percent": max(r["best_gap_percent"] for r in runs), "runs": runs, "smoke": args.smoke},
            out_dir=out_dir,
        )


if __name__ == "__main__":
    main()
