#!/usr/bin/env bash
# Build the trainer image and run a tiny debug training inside it (CPU is enough), as README shows.
# Without a Docker engine it says so and exits 0, so `make image-test` never fails for lack of Docker.
# Extra build arguments (offline builds, see README "Images") come from DIALSUM_BUILD_ARGS, e.g.
#   DIALSUM_BUILD_ARGS="--build-arg BASE_IMAGE=dialsum-base:bookworm --build-arg INSTALLER=pip ..."
set -euo pipefail

cd "$(dirname "$0")/.."
image="${DIALSUM_TRAINER_IMAGE:-dialsum-trainer:latest}"
docker="${DOCKER:-docker}"
export DOCKER_BUILDKIT=1   # the Dockerfiles use RUN --mount and build secrets

if ! "$docker" info >/dev/null 2>&1; then
  echo "image-test: skipped, no Docker engine reachable (docker info failed)."
  exit 0
fi

secret=()
ca="${DIALSUM_CA_BUNDLE:-}"
[[ -n "$ca" ]] && secret=(--secret "id=ca,src=$ca")
# shellcheck disable=SC2086  # DIALSUM_BUILD_ARGS is a list of words
"$docker" build --file images/trainer/Dockerfile --tag "$image" \
  --build-arg GIT_COMMIT="$(git rev-parse HEAD 2>/dev/null || true)" ${DIALSUM_BUILD_ARGS:-} "${secret[@]}" .
"$docker" run --rm "$image" train --models tiny-bart --debug
echo "image-test: ok ($image)"
