#!/usr/bin/env bash
# Build the trainer image and run a tiny debug training inside it (CPU is enough).
# Without a Docker engine it says so and exits 0, so `make image-test` never fails for lack of Docker.
set -euo pipefail

cd "$(dirname "$0")/.."
image="${DIALSUM_TRAINER_IMAGE:-dialsum-trainer:latest}"

if ! docker info >/dev/null 2>&1; then
  echo "image-test: skipped, no Docker engine reachable (docker info failed)."
  exit 0
fi

docker build --file images/trainer/Dockerfile --tag "$image" .
docker run --rm --shm-size 1g \
  --env WANDB_MODE=disabled \
  --env DIALSUM_STORAGE_URL=/outputs/artifacts \
  "$image" train --mode single --models tiny-bart --debug
echo "image-test: ok ($image)"
