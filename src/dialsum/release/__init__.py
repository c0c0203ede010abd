"""What leaves a run for service: the ensemble of a run's models (`ensemble`: reading and publishing; `strategies`:
best single, consensus and MBR, chosen on one half of dev; `mbr`: the competition-metric utility), the statistics
behind every choice (`stats`: held-out split, bootstrap intervals), the champion registry with its promotion policy,
and the run report. Works on published outputs only (storage, data, metric, numpy); never imports torch or the
engine.
"""
