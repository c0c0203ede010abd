"""Data-parallel training of one model on several devices, around accelerate.

`dialsum train --gpus N` relaunches itself once per device: through `accelerate launch` on GPUs (NCCL), through
`torch.distributed.run` on CPUs (gloo; accelerate's CPU launcher would start one process only). Each process
calls `init()`, which joins the process group the launcher described. Every rank
builds the same batch plan, with a global micro-batch of `batch_size × world` rows, and trains on its own
slice of each micro-batch; DistributedDataParallel averages the gradients. The trainer counts a window's label
tokens over all ranks, so the loss stays a mean over every label token of the global window. Evaluation
splits the dev rows the same way (`shard`, then `gather_shards`), so each rank evaluates its share and every
rank gets the same result. Only rank 0 writes and publishes; what one process must do for all (run state, a
checkpoint fetched from storage) runs on rank 0 while the others wait (`on_main`). Outside a launch every
function here is a no-op for one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from dialsum.engine import lifeline
from dialsum.errors import ConfigError, DialsumError
from dialsum.state import stop

T = TypeVar("T")


def init() -> None:
    """Join the process group a launcher set up (WORLD_SIZE > 1 in the environment); one process: nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available(), backend=None if torch.cuda.is_available() else "gloo")


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Rank 0 writes, logs and publishes; the other ranks only train."""
    return rank() == 0


def local_rank() -> int:
    """This process's device index on its machine (LOCAL_RANK from the launcher, else 0)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def shard(rows: Sequence[int]) -> list[int]:
    """This rank's rows of a global micro-batch: every world-th row, so length-sorted batches split evenly."""
    return list(rows[rank() :: world_size()])


def map_shards(fn: Callable[[list], list], rows: Sequence) -> list:
    """`fn` on this rank's `shard` of `rows` (a list in, one item per row out), gathered back into row order on
    every rank. One process: `fn(rows)`."""
    mine = shard(rows)
    return gather_shards(fn(mine) if mine else [])


def on_main(fn: Callable[[], T]) -> T:
    """`fn()` on rank 0 only while the other ranks wait; every rank returns its result or raises its error.

    For what one process must do for all on the shared disk (write run state, fetch a checkpoint): the others
    never see it half done, and a failure on rank 0 fails every rank instead of leaving them waiting.
    One process: `fn()`.
    """
    if not active():
        return fn()
    outcome: list = [None]
    failure: BaseException | None = None
    if is_main():
        try:
            outcome[0] = ("ok", fn())
        except BaseException as exc:  # the other ranks must hear of it, then it propagates here
            failure = exc
            shared = (
                exc if isinstance(exc, DialsumError) else DialsumError(f"rank 0 failed: {type(exc).__name__}: {exc}")
            )
            outcome[0] = ("error", shared)
    dist.broadcast_object_list(outcome, src=0)
    if failure is not None:
        raise failure
    kind, value = outcome[0]
    if kind == "error":
        raise value
    return value


def any_true(flag: bool) -> bool:
    """True on every rank when `flag` is true on any of them (a stop request), so all ranks act at the same step."""
    if not active():
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    value = torch.tensor(int(flag), dtype=torch.int32, device=device)  # NCCL reduces on the GPU only
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def global_count(n: int, device: torch.device) -> int:
    """The sum of `n` over all ranks (label tokens of a window); `n` itself for one process."""
    if not active():
        return n
    total = torch.tensor(n, dtype=torch.long, device=device)
    dist.all_reduce(total)
    return int(total.item())


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise sum over ranks (a copy); the tensor itself for one process."""
    if not active():
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def gather_shards(mine: list) -> list:
    """Undo `shard`: every rank's items (its `shard` of some rows, in order) merged back into row order, on
    every rank. One process: `mine` itself."""
    if not active():
        return list(mine)
    parts: list[list] = [[] for _ in range(world_size())]
    dist.all_gather_object(parts, list(mine))
    total = sum(len(part) for part in parts)
    return [parts[i % len(parts)][i // len(parts)] for i in range(total)]


def all_true(flag: torch.Tensor) -> torch.Tensor:
    """True on every rank only when `flag` is true on all of them, so all ranks skip or step together."""
    if not active():
        return flag
    flag = flag.to(torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return flag.bool()


class FamilyLoss(torch.nn.Module):
    """A family's summed loss as a module's forward. The loss may run the body and the output layer apart
    (label positions only), so the gradient-averaging wrapper must see the whole pass as its forward."""

    def __init__(self, family, model: torch.nn.Module, label_smoothing: float = 0.0):
        super().__init__()
        self.family, self.model, self.label_smoothing = family, model, label_smoothing

    def forward(self, batch: dict) -> torch.Tensor:
        return self.family.loss(self.model, batch, label_smoothing=self.label_smoothing)


def wrap(model: torch.nn.Module, family, label_smoothing: float = 0.0) -> torch.nn.Module:
    """The model with its family loss wrapped for gradient averaging across ranks; the model itself for one
    process. Call a wrapped model with a batch to get the summed loss (see `is_wrapped`)."""
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(
        FamilyLoss(family, model, label_smoothing), device_ids=[device.index] if device.type == "cuda" else None
    )


def is_wrapped(model: torch.nn.Module) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(model, DistributedDataParallel)


def no_sync(model: torch.nn.Module):
    """Skip the gradient all-reduce for a micro-batch that is not the last of its window."""
    from contextlib import nullcontext

    return model.no_sync() if hasattr(model, "no_sync") else nullcontext()


def launch_command(argv: Sequence[str], processes: int, log_dir: str) -> list[str]:
    """The command that runs `dialsum <argv>` once per device: `accelerate launch` on GPUs, `torch.distributed.run`
    on CPUs (a standalone rendezvous on a free local port). The launcher keeps its per-run files in `log_dir`."""
    if processes < 2:
        raise ConfigError(f"--gpus must be at least 2 to launch data-parallel training, got {processes}")
    if torch.cuda.is_available():
        launcher = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--multi_gpu",
            "--log_dir",
            log_dir,
        ]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
        launcher += ["--log-dir", log_dir]
    return launcher + ["-m", "dialsum.cli", *argv]


def launch(argv: Sequence[str], processes: int) -> int:
    """Run `dialsum <argv>` on `processes` devices and wait; returns the launcher's exit code. After Ctrl-C or
    SIGTERM here the launcher gets SIGTERM, which it passes to the ranks: they stop together at their next step
    with a checkpoint. The launcher and its ranks end when this process does (`lifeline`). The launcher's per-run
    folder, which it would otherwise leave in the temp folder each time, is removed when it ends."""
    import signal
    import tempfile

    if torch.cuda.is_available() and torch.cuda.device_count() < processes:
        raise ConfigError(f"--gpus {processes} asks for more GPUs than this machine has ({torch.cuda.device_count()})")
    with tempfile.TemporaryDirectory(prefix="dialsum-launch-") as log_dir:
        command = lifeline.wrap(launch_command(argv, processes, log_dir))
        process = subprocess.Popen(command, env={**launch_env(processes), **lifeline.child_env()})
        passed_on = False
        with stop.cooperative():
            while True:
                try:
                    return process.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
                if stop.requested() and not passed_on:
                    process.send_signal(signal.SIGTERM)
                    passed_on = True


def launch_env(processes: int) -> dict[str, str]:
    """The ranks' environment: ours, with OMP_NUM_THREADS set (to the cores each rank gets) unless it is, so the
    launcher does not print its banner about choosing it."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return env
