"""What leaves a run for service: the ensemble of a run's models (`ensemble`: reading and publishing; `strategies`:
the registry of best single, consensus and MBR, chosen on the selection part of dev; `pooling`: weights, consensus
and the candidate pool; `mbr`: the competition-metric utility), the statistics behind every choice (`stats`:
bootstrap intervals; the dev split itself is `data.holdout`), the champion registry with its promotion policy, and
the run report. Works on published outputs only (storage, data, metric,
numpy); never imports torch or the engine.
"""
