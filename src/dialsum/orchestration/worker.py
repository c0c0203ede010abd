"""`dialsum worker`: set up a work pool from `infra/` and run a Prefect worker on it.

Before the worker starts, the pool is created or updated from its template, a GPU pool gets one work
queue per GPU (`gpu-0` … `gpu-{N-1}`, one run at a time each), and the passthrough variables
(`placement.PASSTHROUGH_ENV`) set in this process's environment are stored in Secret blocks that the
Docker pool template hands to training containers; unset ones are left out of the template.

A worker for a per-GPU pool polls only its per-GPU queues, so no run shares a GPU through the
pool's `default` queue. A Docker pool's worker first checks that it can use the Docker engine's
socket, and runs `dialsum.orchestration.docker_worker`, which removes containers whose start failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Iterable
from copy import deepcopy
from pathlib import Path
from typing import Any

from prefect import get_client
from prefect.blocks.system import Secret
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.exceptions import ObjectAlreadyExists

from dialsum.errors import DialsumError
from dialsum.orchestration.placement import (
    PASSTHROUGH_ENV,
    POOLS,
    TARGETS,
    Pool,
    load_template,
    queue_names,
    secret_block_name,
)


def gpu_queue_prefix(pool: Pool) -> str | None:
    """The per-GPU queue prefix of the target that uses `pool`, if any."""
    return next((t.queue_prefix for t in TARGETS.values() if t.pool == pool and t.queue_prefix), None)


async def ensure_queue(pool: Pool, name: str, concurrency_limit: int) -> None:
    """Create the work queue, or reset the concurrency limit of an existing one."""
    async with get_client() as client:
        try:
            await client.create_work_queue(name, work_pool_name=pool.name, concurrency_limit=concurrency_limit)
        except ObjectAlreadyExists:
            queue = await client.read_work_queue_by_name(name, work_pool_name=pool.name)
            await client.update_work_queue(queue.id, concurrency_limit=concurrency_limit)


def with_passthrough_env(template: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """A copy of a Docker pool template whose default environment passes only `names`."""
    keep = set(names)
    template = deepcopy(template)
    env = template["variables"]["properties"]["env"]
    env["default"] = {name: ref for name, ref in env.get("default", {}).items() if name in keep}
    return template


async def save_passthrough_env(template: dict[str, Any]) -> dict[str, Any]:
    """Store the passthrough variables set here in Secret blocks; return the template passing only those."""
    present = {name: os.environ[name] for name in PASSTHROUGH_ENV if os.environ.get(name)}
    for name, value in present.items():
        await Secret(value=value).asave(secret_block_name(name), overwrite=True)
    return with_passthrough_env(template, present)


async def setup_pool(pool: Pool, num_gpus: int | None, infra_dir: Path | None = None) -> list[str]:
    """Create or update `pool` from its template, with per-GPU queues for GPU pools; returns the queues made."""
    prefix = gpu_queue_prefix(pool)
    queues = queue_names(num_gpus, prefix) if prefix else []
    template = load_template(pool, infra_dir)
    if pool.type == "docker":
        template = await save_passthrough_env(template)
    async with get_client() as client:
        await client.create_work_pool(
            WorkPoolCreate(name=pool.name, type=pool.type, base_job_template=template), overwrite=True
        )
    for queue in queues:
        await ensure_queue(pool, queue, concurrency_limit=1)
    return queues


DOCKER_SOCKET = "/var/run/docker.sock"


def docker_socket() -> str | None:
    """The Docker engine's unix socket this process uses (`DOCKER_HOST`), None for a TCP engine."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        return DOCKER_SOCKET
    return host.removeprefix("unix://") if host.startswith("unix://") else None


def check_docker_socket(path: str) -> None:
    """Ping the Docker engine on `path`; a DialsumError that says how to fix access when this user cannot."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(path)
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = conn.recv(64)
    except PermissionError:
        raise DialsumError(
            f"cannot use the Docker socket {path}: permission denied for uid {os.getuid()} (groups "
            f"{', '.join(map(str, os.getgroups())) or 'none'}). Set DOCKER_GID in .env to the group that owns "
            f"the socket on the host, `stat -c %g /var/run/docker.sock`, then `docker compose up -d`"
        ) from None
    except OSError as exc:
        raise DialsumError(
            f"cannot reach the Docker engine at {path} ({exc.strerror or exc}): mount the host's socket "
            "(-v /var/run/docker.sock:/var/run/docker.sock) and set DOCKER_GID to its group, "
            "`stat -c %g /var/run/docker.sock`"
        ) from None
    if not reply.startswith(b"HTTP/1.") or b" 200 " not in reply.split(b"\r\n", 1)[0] + b" ":
        raise DialsumError(f"the Docker engine at {path} did not answer its ping: {reply[:40]!r}")


def worker_command(pool: Pool, queues: list[str] | None = None) -> list[str]:
    """The `prefect worker start` command line for `pool` (only `queues` when given), with :8080/health."""
    module = "dialsum.orchestration.docker_worker" if pool.type == "docker" else "prefect"
    command = [
        sys.executable,
        "-m",
        module,
        "worker",
        "start",
        "--pool",
        pool.name,
        "--with-healthcheck",
        "--install-policy",
        "never",
    ]
    for queue in queues or []:
        command += ["--work-queue", queue]
    return command


def run(args: argparse.Namespace) -> None:
    """Set up the pool, then replace this process with the Prefect worker."""
    pool = POOLS[args.pool]
    if pool.type == "docker" and not args.setup_only and (path := docker_socket()):
        check_docker_socket(path)
    queues = asyncio.run(setup_pool(pool, args.gpus, args.infra_dir))
    print(f"work pool {pool.name} ({pool.type}) ready" + (f" with queues {', '.join(queues)}" if queues else ""))
    if args.setup_only:
        return
    command = worker_command(pool, queues)
    os.execvp(command[0], command)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `worker` sub-command; it dispatches through `args.func`."""
    parser = subparsers.add_parser("worker", help="Create a work pool from infra/ and start a Prefect worker on it.")
    parser.add_argument("--pool", choices=sorted(POOLS), required=True, help="Work pool to create and serve.")
    parser.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="GPUs on this box, one queue each (GPU pools; default: $DIALSUM_NUM_GPUS).",
    )
    parser.add_argument(
        "--infra-dir", type=Path, default=None, help="Folder with the pool templates (default: ./infra)."
    )
    parser.add_argument("--setup-only", action="store_true", help="Create the pool and queues, then exit.")
    parser.set_defaults(func=run)
