"""One model run: setup → fit → predict → score → save → publish (`phases`), sequenced across attempts under a
lease (`run`), and prediction with a saved run (`serve`). The only place that sequences a run: flows and the CLI
call it. May import release, engine and everything below.
"""

from dialsum.pipeline.phases import RunContext, RunResult, device, new_run_id, setup
from dialsum.pipeline.run import run_model, run_model_on_gpus
from dialsum.pipeline.serve import open_run, predict_run, recorded_base

__all__ = ["RunContext", "RunResult", "device", "new_run_id", "open_run", "predict_run", "recorded_base", "run_model",
           "run_model_on_gpus", "setup"]
