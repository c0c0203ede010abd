"""The units of work that `make test` hands to its worker processes (`tests/support/scheduling.py`)."""

from __future__ import annotations

import inspect

import test_learning
from support.processes import REPO
from support.scheduling import ONE_WORKER, ONE_WORKER_PER_PARAMETER, work_unit


def test_a_parametrized_module_fixture_is_made_once_per_parameter() -> None:
    module = "tests/test_learning.py"
    assert module in ONE_WORKER_PER_PARAMETER
    tests = [name for name, f in inspect.getmembers(test_learning, inspect.isfunction) if name.startswith("test_")]
    assert len(tests) > 1
    for profile in test_learning.TINY:
        units = {work_unit(f"{module}::{name}[{profile}]") for name in tests}
        assert units == {f"{module}[{profile}]"}


def test_one_worker_modules_are_one_unit_and_other_tests_go_alone() -> None:
    for module in ONE_WORKER:
        assert (REPO / module).is_file(), module
        assert work_unit(f"{module}::test_x[a]") == work_unit(f"{module}::test_y") == module
    for nodeid in ("tests/test_config.py::test_x", "tests/test_config.py::test_x[a-b]"):
        assert work_unit(nodeid) == nodeid
