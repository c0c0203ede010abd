#!/usr/bin/env bash
# `make container-test`: the container path for real, on a Docker engine.
#   1. engine: uses a running one; else, as root on Debian, installs docker.io and starts dockerd.
#   2. base: when Docker Hub is unreachable, a local Debian base (images/debian-base.sh) and offline
#      build arguments (pip, Debian's Python, the torch wheel from pip's find-links folder).
#   3. builds dialsum-trainer and dialsum-worker with BuildKit, the commit baked in.
#   4. runs the trainer image by hand as README shows; an unwritable bind mount must fail clearly.
#   5. images/container_test.py: Prefect server, Docker workers and an S3 server on a network of its
#      own; train-all over the CPU Docker pool with three tiny models, one trainer container killed
#      mid-run; manifests checked in S3; no container left behind; everything stopped by id.
#   6. docker-compose up of docker-compose.yml with infra/compose.test.yml (stand-ins for the images
#      that cannot be pulled), one train-all/cpu run through it, then down -v. As root on Debian it
#      installs docker-compose (v1) when missing; elsewhere without it, this phase is skipped.
# Without an engine (and no way to get one) it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
phase_start=$SECONDS
phase() {  # print the time the previous phase took, then name the next
  if [[ -n "${phase_name:-}" ]]; then printf 'container-test: %-28s %4ds\n' "$phase_name" $((SECONDS - phase_start)); fi
  phase_name="$1"
  phase_start=$SECONDS
}
say() { echo "container-test: $*"; }

# ---------------------------------------------------------------- engine
phase "engine"
pick_docker() {  # a client whose `build` runs BuildKit (Docker 20.10's built-in one, or buildx)
  local candidate
  for candidate in ${DOCKER:-} docker /usr/bin/docker; do
    if command -v "$candidate" >/dev/null && DOCKER_BUILDKIT=1 "$candidate" build --help >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

start_engine() {  # root on Debian: install docker.io if needed and start dockerd in the background
  [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null || return 1
  if ! command -v dockerd >/dev/null; then
    say "installing docker.io"
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >/dev/null || return 1
  fi
  say "starting dockerd (log: /var/log/dialsum-dockerd.log); it is stopped again at the end"
  nohup dockerd >/var/log/dialsum-dockerd.log 2>&1 &
  dockerd_pid=$!
  for _ in $(seq 60); do
    docker_bin=$(pick_docker) && "$docker_bin" info >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}

dockerd_pid=""
scratch=""
cleanup() {
  [[ -n "$scratch" ]] && rm -rf "$scratch"
  if [[ -n "$dockerd_pid" ]]; then
    say "stopping the dockerd it started (pid $dockerd_pid)"
    kill "$dockerd_pid" 2>/dev/null && for _ in $(seq 30); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
  fi
}
trap cleanup EXIT

docker_bin=$(pick_docker || true)
if [[ -z "$docker_bin" ]] || ! "$docker_bin" info >/dev/null 2>&1; then
  if ! start_engine; then
    say "skipped, no Docker engine reachable and none could be started here (needs root on Debian)."
    exit 0
  fi
fi
export DOCKER="$docker_bin" DOCKER_BUILDKIT=1
say "engine $("$DOCKER" version --format '{{.Server.Version}}'), client $DOCKER"

# ---------------------------------------------------------------- base image and build arguments
phase "base image"
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
build_args=(--build-arg "GIT_COMMIT=$commit")
secret=()
ca="${DIALSUM_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[[ -s "$ca" ]] && secret=(--secret "id=ca,src=$ca")

if [[ "${DIALSUM_OFFLINE_BUILD:-auto}" == auto ]]; then
  if timeout 30 "$DOCKER" pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then DIALSUM_OFFLINE_BUILD=0; else DIALSUM_OFFLINE_BUILD=1; fi
fi
if [[ "$DIALSUM_OFFLINE_BUILD" == 1 ]]; then
  say "registries unreachable: local Debian base, pip, Debian's Python and a local torch wheel"
  command -v debootstrap >/dev/null || { apt-get install -y -q debootstrap >/dev/null; }
  bash images/debian-base.sh dialsum-base:bookworm
  torch_version=$(python3 -c 'import tomllib; print(next(d.split("==")[1] for d in tomllib.load(open("pyproject.toml","rb"))["project"]["dependencies"] if d.startswith("torch==")))')
  if ! ls .whl/torch-"$torch_version"[+-]*.whl >/dev/null 2>&1; then
    find_links="$(pip config get global.find-links 2>/dev/null || true)"
    wheel=$(ls ${find_links:-/opt/wheels}/torch-"$torch_version"[+-]*.whl 2>/dev/null | head -1 || true)
    [[ -n "$wheel" ]] || { say "no torch-$torch_version wheel in .whl/ or pip's find-links folder"; exit 1; }
    mkdir -p .whl && cp "$wheel" .whl/
  fi
  build_args+=(--build-arg BASE_IMAGE=dialsum-base:bookworm --build-arg INSTALLER=pip
               --build-arg PYTHON_SOURCE=system --build-arg TORCH_SOURCE=local)
fi

# ---------------------------------------------------------------- builds
phase "build trainer"
"$DOCKER" build -q -f images/trainer/Dockerfile -t dialsum-trainer:latest "${build_args[@]}" "${secret[@]}" . >/dev/null
phase "build worker"
"$DOCKER" build -q -f images/worker/Dockerfile -t dialsum-worker:latest "${build_args[@]}" "${secret[@]}" . >/dev/null
phase "build s3 test server"
# moto_server on top of the worker image: the S3 server of the test stack (test-only image).
"$DOCKER" build -q -t dialsum-test-s3:latest "${secret[@]}" -f - . >/dev/null <<'EOF'
FROM dialsum-worker:latest
USER 0
RUN --mount=type=secret,id=ca --mount=type=cache,target=/root/.cache \
    if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python -m pip install --disable-pip-version-check "moto[server]==5.2.5"
USER 1000:1000
ENTRYPOINT ["moto_server"]
EOF
phase "build postgres stand-in"
base_arg=()
if [[ "$DIALSUM_OFFLINE_BUILD" == 1 ]]; then base_arg=(--build-arg BASE_IMAGE=dialsum-base:bookworm); else base_arg=(--build-arg BASE_IMAGE=debian:bookworm-slim); fi
"$DOCKER" build -q -t dialsum-test-postgres:latest "${base_arg[@]}" -f infra/compose-test/postgres.Dockerfile infra/compose-test >/dev/null
"$DOCKER" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^dialsum-(trainer|worker|base)' | sed 's/^/container-test: image /'

# ---------------------------------------------------------------- the trainer image by hand
phase "trainer by hand"
scratch="$(mktemp -d /tmp/dialsum-container-test.XXXXXX)"
# README: no settings at all; storage defaults to the output volume.
"$DOCKER" run --rm dialsum-trainer train --models tiny-bart --debug >"$scratch/by-hand.log" 2>&1 \
  || { cat "$scratch/by-hand.log"; say "FAIL: docker run --rm dialsum-trainer train --models tiny-bart --debug"; exit 1; }
grep -q "/outputs/artifacts/" "$scratch/by-hand.log" || { cat "$scratch/by-hand.log"; say "FAIL: not published under /outputs/artifacts"; exit 1; }
say "ok: docker run --rm dialsum-trainer train --models tiny-bart --debug"
# A bind mount the image's user (uid 1000) cannot write: exit 2 and one line naming the folder and uid.
mkdir -p "$scratch/outputs" && chmod 755 "$scratch/outputs"
set +e
"$DOCKER" run --rm -v "$scratch/outputs:/outputs" dialsum-trainer train --models tiny-bart --debug >"$scratch/locked.log" 2>&1
rc=$?
set -e
if [[ $rc != 2 ]] || ! grep -q "cannot write to the output folder /outputs.*uid 1000" "$scratch/locked.log" || grep -q Traceback "$scratch/locked.log"; then
  cat "$scratch/locked.log"; say "FAIL: unwritable bind mount gave exit $rc"; exit 1
fi
say "ok: unwritable bind mount -> exit 2, $(grep -o 'cannot write to the output folder [^ ]*' "$scratch/locked.log")"

# ---------------------------------------------------------------- the stack
phase "stack and train-all"
python=".venv/bin/python"
[[ -x "$python" ]] || python=python3
"$python" images/container_test.py --docker "$DOCKER" --commit "$commit"
phase "compose"
if ! command -v docker-compose >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  say "installing docker-compose (compose v1, Debian's package)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null 2>&1; } \
    || say "docker-compose could not be installed"
fi
"$python" images/container_test.py --docker "$DOCKER" --commit "$commit" --compose
phase ""
say "passed in $((SECONDS - started))s"
