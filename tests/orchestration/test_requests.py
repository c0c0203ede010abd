"""Flow requests: each fan-out flow's parameters are declared once, as a typed request, and reach Prefect flat."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from prefect.utilities.callables import parameter_schema
from prefect.utilities.hashing import file_hash
from pydantic import BaseModel, Field, ValidationError

from dialsum.orchestration.kfold import KFoldRequest, kfold
from dialsum.orchestration.requests import FanOutRequest, flat_parameters
from dialsum.orchestration.sweep import SweepRequest, sweep
from dialsum.orchestration.train_all import TrainAllRequest, train_all

INFRA = Path(__file__).resolve().parents[2] / "infra"
FLOWS = {"train-all": (train_all, TrainAllRequest), "sweep": (sweep, SweepRequest), "kfold": (kfold, KFoldRequest)}


@pytest.mark.parametrize("name", FLOWS)
def test_prefect_sees_one_described_parameter_per_request_field(name: str) -> None:
    flow, request = FLOWS[name]
    schema = parameter_schema(flow).model_dump()
    fields = request.model_fields
    assert set(schema["properties"]) == set(fields)
    assert schema["required"] == [n for n, f in fields.items() if f.is_required()]
    for field_name, field in fields.items():
        assert not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)), field_name
        if not field.is_required():
            assert schema["properties"][field_name]["description"] == field.description, field_name
    module = sys.modules[flow.fn.__module__]
    assert flow.version == file_hash(module.__file__)  # its own file, not that of the wrapper in `requests`
    positions = {n: p["position"] for n, p in schema["properties"].items()}
    own = [n for n in fields if n not in FanOutRequest.model_fields]
    assert max(positions[n] for n in own) < min(positions[n] for n in FanOutRequest.model_fields)


def test_the_fan_out_parameters_read_alike_in_every_flow() -> None:
    shared = []
    for flow, _ in FLOWS.values():
        properties = parameter_schema(flow).model_dump()["properties"]
        shared.append(
            {n: {k: v for k, v in properties[n].items() if k != "position"} for n in FanOutRequest.model_fields}
        )
    assert shared[0] == shared[1] == shared[2]
    assert shared[0]["target"]["default"] == "process" and shared[0]["overrides"]["default"] is None


def test_a_flat_call_is_validated_into_one_request() -> None:
    class Request(FanOutRequest):
        model: str = Field(description="the model")
        run_id: str = Field(default_factory=lambda: "a-new-id", description="the run")
        trials: int = Field(8, description="trials")

    @flat_parameters(Request)
    def run(request: Request) -> Request:
        """Run it."""
        return request

    assert run.__name__ == "run" and run.__doc__ == "Run it."
    request = run("m", trials=3, overrides=["a=1"])
    assert (request.model, request.trials, request.overrides, request.run_id) == ("m", 3, ["a=1"], "a-new-id")
    assert run(model="m", run_id=None, overrides=None).overrides == []  # None stands for a factory's default
    assert run("m", run_id="r-1").run_id == "r-1"
    with pytest.raises(TypeError, match="trialz"):
        run("m", trialz=3)
    with pytest.raises(ValidationError, match="trials"):
        run("m", trials="many")
    with pytest.raises(ValidationError, match="frozen"):
        request.trials = 4


def test_every_shipped_deployment_and_a_run_override_validate_as_its_flow_request() -> None:
    """Prefect merges a run's parameters over its deployment's at the top level only: the request is flat, so
    `--param num_gpus=4` keeps the deployment's `target`."""
    spec = yaml.safe_load((INFRA / "prefect.yaml").read_text(encoding="utf-8"))
    entrypoints = {
        "flows/train_all.py:train_all": "train-all",
        "flows/sweep.py:sweep": "sweep",
        "flows/kfold.py:kfold": "kfold",
    }
    checked = set()
    for deployment in spec["deployments"]:
        name = entrypoints.get(deployment["entrypoint"])
        if name is None:
            continue
        request = FLOWS[name][1]
        merged = {**deployment["parameters"], "num_gpus": 4}
        validated = request.model_validate(merged)
        assert validated.target == deployment["parameters"]["target"] and validated.num_gpus == 4
        checked.add(f"{name}/{deployment['name']}")
    assert {"train-all/nightly", "sweep/gpu", "kfold/gpu"} <= checked
