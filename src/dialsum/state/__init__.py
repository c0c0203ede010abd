"""Run state, torch-free: a model run across attempts (`runs`: published, resumable, where it stopped), the
process-wide stop request (`stop`: Ctrl-C and SIGTERM) and the finished phases recorded in a run's state folder
(`phases`). The CLI's checks, the pipeline, the engine and the flows share it. May import data, storage and the
foundations; never torch.
"""
