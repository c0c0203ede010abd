"""One model run: setup → fit → predict → score → save → publish (`phases`; `generate_only` for a family that only
generates, such as an API model), sequenced across attempts under a lease (`run`), prediction with a saved run
(`serve`) and the search over its generation settings (`decoding_search`). The only place that sequences a run:
flows and the CLI call it. May import release, engine and everything below.
"""

from importlib import import_module

# Imported on first use, so a generate-only run (an API model) never loads the torch of the training phases.
_WHERE = {
    "RunContext": "phases",
    "device": "phases",
    "setup": "phases",
    "RunResult": "result",
    "new_run_id": "result",
    "run_model": "run",
    "run_model_on_gpus": "run",
    "launch_on_gpus": "run",
    "open_run": "serve",
    "predict_run": "serve",
    "recorded_base": "serve",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(f"dialsum.pipeline.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'dialsum.pipeline' has no attribute {name!r}")


__all__ = [
    "RunContext",
    "RunResult",
    "device",
    "launch_on_gpus",
    "new_run_id",
    "open_run",
    "predict_run",
    "recorded_base",
    "run_model",
    "run_model_on_gpus",
    "setup",
]
