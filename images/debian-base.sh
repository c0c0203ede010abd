#!/usr/bin/env bash
# Build a minimal Debian image with Python from Debian packages only, for machines that cannot pull
# from Docker Hub or other registries (air-gapped GPU clusters, locked-down CI):
#   images/debian-base.sh [TAG]        # default dialsum-base:bookworm; needs root and debootstrap
# Pass it to the image builds as the base:
#   docker build --build-arg BASE_IMAGE=dialsum-base:bookworm --build-arg PYTHON_SOURCE=system ...
# The image holds Debian's python3.11 with venv, CA certificates and nothing else (~60 MB compressed).
set -euo pipefail

tag="${1:-dialsum-base:bookworm}"
suite="${DEBIAN_SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
docker="${DOCKER:-docker}"

if "$docker" image inspect "$tag" >/dev/null 2>&1; then
  echo "debian-base: $tag exists"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debian-base: debootstrap not installed (apt-get install debootstrap)" >&2; exit 1; }

root="$(mktemp -d /tmp/dialsum-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase "$suite" "$root" "$mirror"
# Python goes in through apt inside the new root, so its maintainer scripts run in a complete system.
chroot "$root" apt-get update -q
chroot "$root" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends python3.11 python3.11-venv ca-certificates
chroot "$root" apt-get clean
# Keep the image lean: no package lists, caches, docs or locales.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
tar -C "$root" -c . | "$docker" import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$tag"
echo "debian-base: built $tag"
