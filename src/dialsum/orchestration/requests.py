"""Flow requests: a flow's parameters declared once, as a typed pydantic model, and what every fan-out flow shares.

`flat_parameters(Request)` gives the decorated function Prefect's view of one parameter per field (with its type,
default and description, which the Prefect UI shows in the run form), and calls it with the validated request.
The parameters stay flat because Prefect merges a run's parameters over its deployment's at the top level only:
`prefect deployment run sweep/gpu --param num_gpus=4` must keep the deployment's `target`, which a nested request
would replace. A field whose default comes from a factory (a new run id, an empty list) shows as `None` there, and
`None` stands for that default. Prefect versions a flow by the file its function comes from, which is this one
for every decorated flow; so those flows name their own file (`version=file_hash(__file__)`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")


class FanOutRequest(BaseModel):
    """What every flow that starts `train-model` children (train-all, sweep, kfold) asks of them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str = Field("process", description="where children run: a placement target (`placement`)")
    num_gpus: int | None = Field(None, description="GPUs to spread the children over (default: the target's)")
    data_dir: str | None = Field(None, description="a data folder or storage URL (default: the bundled sample)")
    storage_url: str | None = Field(None, description="where to publish (default DIALSUM_STORAGE_URL)")
    debug: bool = Field(False, description="a few steps on a small slice")
    overrides: list[str] = Field(default_factory=list, description="KEY=VALUE config overrides for every child")
    embedded: bool = Field(False, description="the CLI's mode: children start from this process, without a worker")


class OneModelFanOut(FanOutRequest):
    """A flow that runs one model config in many children (sweep: a trial each, kfold: a fold each)."""

    model: str = Field(description="a config stem in configs/models/ or a YAML path")
    parallel: int = Field(1, description="children at once, at least 1")
    seed: int = Field(0, description="the seed of what the flow draws (trial parameters, fold assignment)")
    poll_seconds: float = Field(2.0, description="how often the running children are looked at")


def flat_parameters(request_type: type[R]) -> Callable[[Callable[[R], T]], Callable[..., T]]:
    """Decorate `fn(request)` into a function of the request's fields, one parameter each (required ones first,
    positional too), which validates them into one `request_type` and calls `fn` with it."""

    signature = flow_signature(request_type)

    def decorate(fn: Callable[[R], T]) -> Callable[..., T]:
        def flow_function(*args: Any, **kwargs: Any) -> T:
            given = signature.bind(*args, **kwargs).arguments
            fields = request_type.model_fields
            given = {k: v for k, v in given.items() if v is not None or fields[k].default_factory is None}
            return fn(request_type.model_validate(given))

        for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
            setattr(flow_function, attribute, getattr(fn, attribute))
        flow_function.__signature__ = signature  # type: ignore[attr-defined]
        return flow_function

    return decorate


def flow_signature(request_type: type[BaseModel]) -> inspect.Signature:
    """The flat signature Prefect reads: required fields first, then the request's own fields before those it
    inherits, each optional one with its default as a `Field` that carries its description (Prefect's own form for a
    described parameter)."""
    fields = request_type.model_fields
    order = [name for cls in request_type.__mro__ for name in vars(cls).get("__annotations__", {}) if name in fields]
    parameters = []
    for name in sorted(dict.fromkeys(order), key=lambda name: not fields[name].is_required()):
        field = fields[name]
        if field.is_required():
            parameters.append(
                inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=field.annotation)
            )
            continue
        factory = field.default_factory is not None
        parameters.append(
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=field.annotation | None if factory else field.annotation,
                default=Field(None if factory else field.default, description=field.description),
            )
        )
    return inspect.Signature(parameters)
