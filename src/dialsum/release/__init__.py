"""What leaves a run for service: the ensemble of a run's models, the champion registry with its promotion policy,
and the run report. Works on published outputs only (storage, data, metric); never imports torch or the engine.
"""
