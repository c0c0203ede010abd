"""How `make test` (`pytest -n 2`) cuts the suite into units of work for its worker processes
(`pytest_xdist_make_scheduler` in tests/conftest.py)."""

from __future__ import annotations

# Modules whose tests run in one worker process, in order: the journeys' steps use what the steps before them left
# in the process (`RUNS`, the session's bucket); the benchmark smoke runs and the sweep server tests' Prefect worker
# and deployment are module fixtures, each worth making once.
ONE_WORKER = ("tests/journeys/test_profiles.py", "tests/test_bench.py", "tests/orchestration/test_sweep_server.py")
# Modules whose module fixture is parametrized (`params=`) and worth making once per parameter: the tests with one
# parameter share a worker process (each tiny profile trains once, not once in each worker).
ONE_WORKER_PER_PARAMETER = ("tests/test_learning.py",)


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its module (`ONE_WORKER`), its module and parameter
    (`ONE_WORKER_PER_PARAMETER`), else the test itself."""
    module = nodeid.split("::", 1)[0]
    if module in ONE_WORKER:
        return module
    if module in ONE_WORKER_PER_PARAMETER and nodeid.endswith("]"):
        return f"{module}[{nodeid.rsplit('[', 1)[1]}"
    return nodeid
