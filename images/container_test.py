"""The container stack of `make container-test` (run by images/container-test.sh after the builds).

On a Docker network of its own it starts a Prefect server (worker image), an S3 server (moto), the
project's Docker workers for the CPU and GPU pools (worker image, Docker socket) and the process
worker that runs `train-all` parents. Then:
- a Docker worker without the socket's group must refuse to start and name DOCKER_GID;
- `train-model/docker-gpu` started by hand lands on queue gpu-0 and, on this GPU-less engine, fails
  to start its container, which must not be left behind;
- `train-all/cpu` trains three tiny models, each in its own trainer container publishing to S3; one
  container is killed mid-run (crash relaunches off: relaunch and resume are checked by the Prefect process-worker
  test): the others finish, the ensemble is built, the parent fails naming it;
- manifests in S3 are checked (files, sizes, the baked-in commit) and no container is left.
Everything started here is stopped by id at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["tiny-bart", "tiny-llama", "tiny-qwen3"]
VICTIM = "tiny-llama"
BUCKET = "dialsum"
PREFIX = "runs"
# Throwaway keys of the S3 server this test starts in its own network (never a real account).
KEYS = dict(
    zip(
        ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"),
        ("container-test", "container-test-key", "us-east-1"),
    )
)
TIMEOUT = 900


def log(message: str) -> None:
    print(f"container-test: {message}", flush=True)


class Stack:
    """Containers, network, volumes and files this test creates, removed by id in `close`."""

    def __init__(self, docker: str) -> None:
        self.docker = docker
        self.tag = uuid.uuid4().hex[:6]
        self.network = f"dialsum-ct-{self.tag}"
        self.containers: list[str] = []
        self.volumes = [f"dialsum-ct-{self.tag}-cache", f"dialsum-ct-{self.tag}-outputs"]
        self.network_id: str | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="dialsum-ct-"))

    def run(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([self.docker, *args], capture_output=True, text=True, check=check, timeout=timeout)

    def start(
        self,
        name: str,
        image: str,
        *args: str,
        entrypoint: str | None = None,
        env: dict | None = None,
        socket: bool = False,
    ) -> str:
        """Start a detached container on the test network; returns its id."""
        cmd = ["run", "-d", "--name", f"{self.network}-{name}", "--network", self.network]
        for key, value in (env or {}).items():
            cmd += ["-e", f"{key}={value}"]
        if socket:
            gid = os.stat("/var/run/docker.sock").st_gid
            cmd += ["-v", "/var/run/docker.sock:/var/run/docker.sock", "--group-add", str(gid)]
        if entrypoint:
            cmd += ["--entrypoint", entrypoint]
        container = self.run(*cmd, image, *args).stdout.strip()
        self.containers.append(container)
        return container

    def address(self, container: str) -> str:
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        return self.run("inspect", "-f", fmt, container).stdout.strip()

    def logs(self, container: str, lines: int = 40) -> str:
        return (
            self.run("logs", "--tail", str(lines), container, check=False).stdout
            + self.run("logs", "--tail", str(lines), container, check=False).stderr
        )

    def close(self) -> None:
        for container in reversed(self.containers):
            self.run("rm", "-f", "-v", container, check=False)
        if self.network_id:
            self.run("network", "rm", self.network_id, check=False)
        for volume in self.volumes:
            self.run("volume", "rm", volume, check=False)
        shutil.rmtree(self.scratch, ignore_errors=True)


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer within {timeout:.0f}s")
        time.sleep(1)


def test_infra(stack: Stack) -> Path:
    """infra/ for the test workers: the real templates on the test network and volumes."""
    infra = stack.scratch / "infra"
    shutil.copytree(ROOT / "infra", infra)
    for name in ("docker-cpu-pool.json", "docker-gpu-pool.json"):
        template = json.loads((infra / name).read_text())
        props = template["variables"]["properties"]
        props["networks"]["default"] = [stack.network]
        props["volumes"]["default"] = [f"{stack.volumes[0]}:/cache", f"{stack.volumes[1]}:/outputs"]
        props["shm_size"]["default"] = "256m"
        (infra / name).write_text(json.dumps(template))
    for path in [stack.scratch, *stack.scratch.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return infra


def check_socket_refusal(stack: Stack) -> None:
    """A Docker worker whose user is not in the socket's group refuses to start and says how to fix it."""
    result = stack.run(
        "run",
        "--rm",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "dialsum-worker:latest",
        "worker",
        "--pool",
        "dialsum-docker-cpu",
        check=False,
        timeout=120,
    )
    if os.stat("/var/run/docker.sock").st_mode & 0o006:
        log("socket is world-accessible here: refusal not checked")
        return
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "DOCKER_GID" in result.stderr and "stat -c %g /var/run/docker.sock" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    log("ok: worker without the socket's group exits 2: " + result.stderr.strip().splitlines()[-1][:160])


def start_stack(stack: Stack) -> dict[str, str]:
    stack.network_id = stack.run("network", "create", stack.network).stdout.strip()
    server = stack.start(
        "prefect",
        "dialsum-worker:latest",
        "server",
        "start",
        "--host",
        "0.0.0.0",
        "--port",
        "4200",
        entrypoint="prefect",
        env={"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": "/tmp/prefect"},
    )
    s3 = stack.start("s3", "dialsum-test-s3:latest", "-H", "0.0.0.0", "-p", "5000")
    api = f"http://{stack.address(server)}:4200/api"
    endpoint = f"http://{stack.address(s3)}:5000"
    wait_http(f"{api}/health", timeout=180)
    wait_http(f"{endpoint}/moto-api/", timeout=60)
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    log(f"prefect server {api}, s3 {endpoint}")
    return {"api": api, "endpoint": endpoint}


def start_workers(stack: Stack, infra: Path) -> None:
    env = {
        "PREFECT_API_URL": f"http://{stack.network}-prefect:4200/api",
        "DIALSUM_STORAGE_URL": f"s3://{BUCKET}/{PREFIX}",
        "DIALSUM_S3_ENDPOINT_URL": f"http://{stack.network}-s3:5000",
        "WANDB_MODE": "disabled",
        **KEYS,
    }
    mount = ["-v", f"{infra}:/ct-infra:ro"]
    for pool, extra in (("dialsum-docker-cpu", []), ("dialsum-docker-gpu", ["--gpus", "1"])):
        stack.containers.append(
            stack.run(
                "run",
                "-d",
                "--name",
                f"{stack.network}-{pool}",
                "--network",
                stack.network,
                *mount,
                *sum((["-e", f"{k}={v}"] for k, v in env.items()), []),
                "-v",
                "/var/run/docker.sock:/var/run/docker.sock",
                "--group-add",
                str(os.stat("/var/run/docker.sock").st_gid),
                "dialsum-worker:latest",
                "worker",
                "--pool",
                pool,
                "--infra-dir",
                "/ct-infra",
                *extra,
            ).stdout.strip()
        )
    stack.start("control", "dialsum-worker:latest", "worker", "--pool", "dialsum-control", env=env)


async def wait_pools(names: list[str], timeout: float = 180) -> None:
    from prefect import get_client

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            pools = {p.name: p for p in await client.read_work_pools()}
            workers = {n: await client.read_workers_for_work_pool(n) if n in pools else [] for n in names}
            if all(workers.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"workers not online: {[n for n, w in workers.items() if not w]}")
            await asyncio.sleep(2)


def deploy(env: dict[str, str]) -> None:
    from dialsum.orchestration.placement import POOLS
    from dialsum.orchestration.worker import setup_pool

    for name in ("dialsum-process", "dialsum-k8s"):  # the compose workers made the docker and control pools
        asyncio.run(setup_pool(POOLS[name], None, ROOT / "infra"))
    asyncio.run(setup_pool(POOLS["dialsum-process-gpu"], 1, ROOT / "infra"))  # train-model/process-gpu names gpu-0
    result = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all", "--prefect-file", "infra/prefect.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


async def flow_runs(client, flow: str) -> list:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    return await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])))


async def kill_victim(stack: Stack, client, parent_id) -> str:
    """Wait until the victim model's container runs its flow, then kill it; returns the container id."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for run in await flow_runs(client, "train-model"):
            if (
                run.parameters.get("model") == VICTIM
                and run.state
                and run.state.is_running()
                and run.infrastructure_pid
            ):
                container = run.infrastructure_pid.rsplit(":", 1)[1]
                await asyncio.sleep(3)
                stack.run("kill", container)
                log(f"killed {VICTIM}'s trainer container {container[:12]} (flow run {run.name})")
                return container
        parent = await client.read_flow_run(parent_id)
        assert not parent.state.is_final(), f"train-all ended before {VICTIM} ran: {parent.state}"
        await asyncio.sleep(1)
    raise AssertionError(f"{VICTIM} never ran")


async def wait_final(client, run_id, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = await client.read_flow_run(run_id)
        if run.state and run.state.is_final():
            return run
        await asyncio.sleep(2)
    raise AssertionError(f"flow run {run_id} not final after {timeout:.0f}s")


async def exercise(stack: Stack, run_id: str) -> dict[str, Any]:
    from prefect import get_client
    from prefect.deployments import run_deployment

    started = time.monotonic()
    by_hand = await run_deployment(
        "train-model/docker-gpu", parameters={"model": "tiny-bart", "run_id": f"{run_id}-gpu"}, timeout=0
    )
    assert by_hand.work_queue_name == "gpu-0", by_hand.work_queue_name
    async with get_client() as client:
        variables = (await client.read_deployment(by_hand.deployment_id)).job_variables
    assert variables == {"gpu_ids": ["0"]}, variables
    log("ok: train-model/docker-gpu started by hand is on queue gpu-0 with gpu_ids ['0']")
    parent = await run_deployment(
        "train-all/cpu",
        parameters={"models": MODELS, "debug": True, "run_id": run_id, "crash_relaunches": 0},
        timeout=0,
    )
    async with get_client() as client:
        victim = await kill_victim(stack, client, parent.id)
        parent = await wait_final(client, parent.id)
        gpu_run = await wait_final(client, by_hand.id, timeout=120)
        children = {
            r.parameters["model"]: r for r in await flow_runs(client, "train-model") if r.parameters["run_id"] == run_id
        }
        all_runs = [r.id for r in await client.read_flow_runs()]
    log(f"train-all/cpu: {parent.state.name} after {time.monotonic() - started:.0f}s: {parent.state.message}")
    return {"parent": parent, "children": children, "gpu_run": gpu_run, "victim": victim, "all_runs": all_runs}


def check_outcome(stack: Stack, outcome: dict[str, Any], endpoint: str, run_id: str, commit: str) -> None:
    parent, children = outcome["parent"], outcome["children"]
    assert parent.state.is_failed(), parent.state
    assert VICTIM in (parent.state.message or ""), parent.state.message
    assert children[VICTIM].state.is_crashed(), children[VICTIM].state
    for model in set(MODELS) - {VICTIM}:
        assert children[model].state.is_completed(), (model, children[model].state)
    containers = {r.infrastructure_pid for r in children.values()}
    assert len(containers) == len(MODELS) and None not in containers, containers
    log(f"ok: {len(MODELS)} trainer containers; parent failed naming {VICTIM}: {parent.state.message}")

    gpu_state = outcome["gpu_run"].state
    assert not gpu_state.is_completed(), gpu_state
    worker_logs = stack.logs(f"{stack.network}-dialsum-docker-gpu", lines=400)
    assert "created but did not start" in worker_logs, worker_logs[-3000:]
    log(f"ok: GPU run without a GPU: {gpu_state.name}: {(gpu_state.message or '')[:160]}")

    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    objects = {
        o["Key"]: o["Size"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
        for o in page.get("Contents", [])
    }
    assert not any(k.startswith(f"{PREFIX}/{PREFIX}/") for k in objects), "doubled prefix"
    for model in [*sorted(set(MODELS) - {VICTIM}), "ensemble"]:
        key = f"{PREFIX}/{run_id}/{model}/manifest.json"
        manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        assert manifest["git_commit"] == commit, (model, manifest["git_commit"])
        for entry in manifest["files"]:
            assert objects.get(f"{PREFIX}/{run_id}/{model}/{entry['path']}") == entry["size"], (model, entry["path"])
        log(f"ok: s3://{BUCKET}/{key}: {len(manifest['files'])} files, git_commit {commit[:12]}")
    assert f"{PREFIX}/{run_id}/{VICTIM}/manifest.json" not in objects, f"{VICTIM} published although killed"

    left = []
    for flow_run_id in outcome["all_runs"]:
        left += stack.run("ps", "-aq", "--filter", f"label=io.prefect.flow-run-id={flow_run_id}").stdout.split()
    assert not left, f"containers left behind: {left}"
    log(f"ok: no flow-run container left behind ({len(outcome['all_runs'])} flow runs checked)")


# ---------------------------------------------------------------- docker-compose.yml


COMPOSE_SERVICES = {
    "postgres",
    "prefect-server",
    "minio",
    "minio-init",
    "prefect-worker",
    "prefect-worker-cpu",
    "prefect-controller",
}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def compose_env(path: Path) -> dict[str, str]:
    """The test's .env: W&B is left at the user's default (offline without a key)."""
    env = {
        "DIALSUM_NUM_GPUS": "1",
        "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
        **{name: uuid.uuid4().hex for name in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD")},
        "MINIO_ROOT_USER": "compose-test",
        "DIALSUM_STORAGE_URL": f"s3://{BUCKET}/{PREFIX}",
        "GIT_COMMIT": "",
        "PREFECT_PORT": str(free_port()),
        "MINIO_API_PORT": str(free_port()),
        "MINIO_CONSOLE_PORT": str(free_port()),
        **KEYS,
    }
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return env


def compose_process_env(compose_text: str) -> dict[str, str]:
    """This process's environment without the variables docker-compose.yml substitutes: compose takes those
    from the shell before the env file, and the test must run on its env file alone (e.g. not on CI's WANDB_MODE)."""
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", compose_text))
    return {k: v for k, v in os.environ.items() if k not in used}


def compose_status(docker: str) -> dict[str, str]:
    """Each compose service's state: its health, else its status and exit code."""
    fmt = (
        '{{index .Config.Labels "com.docker.compose.service"}} '
        "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}-{{.State.ExitCode}}{{end}}"
    )
    ids = subprocess.run(
        [docker, "ps", "-aq", "--filter", "label=com.docker.compose.project=dialsum"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not ids:
        return {}
    out = subprocess.run([docker, "inspect", "-f", fmt, *ids], capture_output=True, text=True, check=True).stdout
    return dict(line.split(" ", 1) for line in out.splitlines() if line.strip())


def wait_compose_healthy(docker: str, timeout: float = 300) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        status = compose_status(docker)
        ready = all(status.get(s) == ("exited-0" if s == "minio-init" else "healthy") for s in COMPOSE_SERVICES)
        if ready:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"compose services not healthy after {timeout:.0f}s: {status}")
        time.sleep(3)


def compose_main(docker: str, commit: str) -> int:
    """docker-compose up of the project's services (stand-ins for unpullable images), one train-all/cpu run, down."""
    if shutil.which("docker-compose") is None:
        log("compose: skipped, docker-compose not installed")
        return 0
    if subprocess.run([docker, "network", "inspect", "dialsum"], capture_output=True).returncode == 0:
        log("compose: skipped, a network named dialsum exists (a stack of this machine's own): not touching it")
        return 0
    scratch = Path(tempfile.mkdtemp(prefix="dialsum-compose-"))
    # Compose v1 does not know the top-level `name:` key; `-p dialsum` is the same project name.
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    (scratch / "docker-compose.yml").write_text(text.replace("\nname: dialsum\n", "\n", 1))
    env = compose_env(scratch / "compose.env")
    compose = [
        "docker-compose",
        "-p",
        "dialsum",
        "--project-directory",
        str(ROOT),
        "--env-file",
        str(scratch / "compose.env"),
        "-f",
        str(scratch / "docker-compose.yml"),
        "-f",
        str(ROOT / "infra" / "compose.test.yml"),
        "--profile",
        "cpu",
    ]
    shell = compose_process_env(text)
    started = time.monotonic()
    try:
        up = subprocess.run(
            [*compose, "up", "-d", "--no-build"], capture_output=True, text=True, timeout=600, env=shell
        )
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        status = wait_compose_healthy(docker)
        log(
            f"compose: up in {time.monotonic() - started:.0f}s: "
            + ", ".join(f"{k} {v}" for k, v in sorted(status.items()))
        )
        os.environ.update(
            {
                "PREFECT_API_URL": f"http://127.0.0.1:{env['PREFECT_PORT']}/api",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
        )
        deploy(dict(os.environ))
        run_id = f"compose-{uuid.uuid4().hex[:6]}"
        parent = asyncio.run(compose_run(run_id))
        assert parent.state.is_completed(), (parent.state.name, parent.state.message)
        endpoint = f"http://127.0.0.1:{env['MINIO_API_PORT']}"
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"],
            region_name="us-east-1",
        )
        for model in ("tiny-bart", "ensemble"):
            manifest = json.loads(
                s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{run_id}/{model}/manifest.json")["Body"].read()
            )
            assert manifest["model"] == model and manifest["files"] and manifest["git_commit"] == commit, manifest
        log(
            f"compose: train-all/cpu {run_id} completed through the compose stack; manifests in s3://{BUCKET}/{PREFIX}/{run_id}/"
        )
        check_offline_report(docker, compose, shell, run_id)
    except BaseException:
        logs = subprocess.run([*compose, "logs", "--tail", "40"], capture_output=True, text=True, env=shell)
        print(logs.stdout[-12000:], file=sys.stderr)
        raise
    finally:
        subprocess.run(
            [*compose, "down", "-v", "--remove-orphans"], capture_output=True, text=True, timeout=300, env=shell
        )
        shutil.rmtree(scratch, ignore_errors=True)
    assert not compose_status(docker), "compose containers left after down"
    log(f"compose: down -v, nothing left ({time.monotonic() - started:.0f}s in all)")
    return 0


def check_offline_report(docker: str, compose: list[str], shell: dict[str, str], run_id: str) -> None:
    """The controller wrote train-all's W&B report run offline, on the outputs volume the trainers share."""
    controller = subprocess.run(
        [*compose, "ps", "-q", "prefect-controller"], capture_output=True, text=True, env=shell, check=True
    ).stdout.strip()
    found = subprocess.run(
        [docker, "exec", controller, "grep", "-rlF", f"train-all-{run_id}", f"/outputs/{run_id}/wandb"],
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0 and "offline-run-" in found.stdout, (
        "no offline W&B report run",
        found.stdout,
        found.stderr,
    )
    log(f"compose: W&B report run written offline by the controller: {found.stdout.split()[0]}")


async def compose_run(run_id: str):
    from prefect import get_client
    from prefect.deployments import run_deployment

    parent = await run_deployment(
        "train-all/cpu", parameters={"models": ["tiny-bart"], "debug": True, "run_id": run_id}, timeout=0
    )
    async with get_client() as client:
        return await wait_final(client, parent.id)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docker", default="docker")
    parser.add_argument("--commit", required=True)
    parser.add_argument(
        "--compose", action="store_true", help="exercise docker-compose.yml instead of the hand-built stack"
    )
    args = parser.parse_args()
    if args.compose:
        return compose_main(args.docker, args.commit)
    stack = Stack(args.docker)
    try:
        check_socket_refusal(stack)
        infra = test_infra(stack)
        urls = start_stack(stack)
        os.environ.update({"PREFECT_API_URL": urls["api"], "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
        start_workers(stack, infra)
        asyncio.run(wait_pools(["dialsum-docker-cpu", "dialsum-docker-gpu", "dialsum-control"]))
        deploy(dict(os.environ))
        run_id = f"ct-{stack.tag}"
        outcome = asyncio.run(exercise(stack, run_id))
        check_outcome(stack, outcome, urls["endpoint"], run_id, args.commit)
    except BaseException:
        for container in stack.containers:
            log(f"--- logs of {container[:12]}")
            print(stack.logs(container), file=sys.stderr)
        raise
    finally:
        stack.close()
    remaining = [c for c in stack.containers if stack.run("ps", "-aq", "--filter", f"id={c}").stdout.strip()]
    assert not remaining, f"not removed: {remaining}"
    log("ok: stack stopped and removed by id")
    return 0


if __name__ == "__main__":
    sys.exit(main())
