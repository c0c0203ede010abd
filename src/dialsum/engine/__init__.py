"""The training engine: the loop (`trainer`), optimizers and schedules, non-finite guards, checkpoints,
evaluation with best weights, data-parallel helpers and host memory. May import models, run state, storage,
data and the foundations; never the pipeline, release or orchestration.
"""
