#!/usr/bin/env bash
# `make image`: builds the one meshenc image from the Dockerfile, hermetically, and reports its
# build time and size.
#
#   IMAGE=meshenc:<appVersion>   the tag; the default is what the chart's default values run
#   MESHENC_BASE=auto            auto: the registry's python:3.11-slim-bookworm when it can be
#                                pulled (or is already present), else a base made from Debian
#                                packages (scripts/build-base-image.sh); python or debian force one
#   --if-possible                exit 0 with a note when no container engine is present or
#                                installable (make test: tests/system/image then skips)
#
# The engine is docker when a docker daemon answers, else podman (installed with apt-get when
# missing, by scripts/ensure-image-deps.sh), run with runc and with ulimits this host allows.
# Python packages come from a wheelhouse filled on this machine (scripts/fetch-image-wheels.sh)
# with the versions constraints.txt pins; the build itself reads no package index.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ "${1:-}" == --if-possible ]]; then
  if ! scripts/ensure-image-deps.sh; then
    echo "image: no container engine, none installable here; tests/system/image will be skipped" >&2
    exit 0
  fi
else
  scripts/ensure-image-deps.sh
fi
PYTHON="${PYTHON:-.venv/bin/python}"
version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' deploy/helm/meshenc/Chart.yaml)"
image="${IMAGE:-meshenc:$version}"
registry_base=docker.io/library/python:3.11-slim-bookworm
debian_base=localhost/meshenc-base:bookworm
started=$SECONDS

build_flags=()
if docker info >/dev/null 2>&1; then
  engine=(docker)
  debian_base=meshenc-base:bookworm
else
  engine=(podman)
  # Containers get the open-file and process limits this shell may grant, not podman's defaults
  # (which can exceed what the host allows, and then no container starts).
  nofile="$(ulimit -Hn)" nproc="$(ulimit -Hu)"
  [[ "$nofile" == unlimited ]] && nofile=1048576
  [[ "$nproc" == unlimited || "$nproc" -gt 32768 ]] && nproc=32768
  build_flags+=(--runtime runc --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
fi

have_image() { "${engine[@]}" image inspect "$1" >/dev/null 2>&1; }

case "${MESHENC_BASE:-auto}" in
  python) base="$registry_base" ;;
  debian) base="$debian_base" ;;
  auto)
    if have_image "$registry_base" || timeout 180 "${engine[@]}" pull -q "$registry_base" >/dev/null 2>&1; then
      base="$registry_base"
    else
      base="$debian_base"
    fi
    ;;
  *) echo "image: MESHENC_BASE must be auto, python or debian" >&2; exit 2 ;;
esac
if [[ "$base" == "$debian_base" ]] && ! have_image "$debian_base"; then
  echo "image: no registry base image; making $debian_base from Debian packages"
  scripts/ensure-image-deps.sh --base
  scripts/build-base-image.sh "$debian_base" "${engine[@]}"
fi

wheels="$(mktemp -d)"
trap 'rm -rf "$wheels"' EXIT
PYTHON="$PYTHON" scripts/fetch-image-wheels.sh "$wheels"

tags=(--tag "$image")
# A Kubernetes node reads the short name meshenc:X as docker.io/library/meshenc:X; podman would
# name it localhost/meshenc:X, so give it the node's name too (what `podman save` should write).
if [[ "${engine[0]}" == podman && "$image" != */* ]]; then
  tags+=(--tag "docker.io/library/$image")
fi
previous="$("${engine[@]}" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
"${engine[@]}" build "${build_flags[@]}" --quiet \
  --build-arg PYTHON_IMAGE="$base" --build-context wheels="$wheels" "${tags[@]}" . >/dev/null
# The image this build replaced is now untagged: remove it, unless a container still uses it,
# so that rebuilds do not pile up half a gigabyte each.
current="$("${engine[@]}" image inspect --format '{{.Id}}' "$image")"
if [[ -n "$previous" && "$previous" != "$current" ]]; then
  "${engine[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi

size="$("${engine[@]}" image inspect --format '{{.Size}}' "$image")"
echo "image $image built in $((SECONDS - started)) s with ${engine[0]} on $base:" \
  "$((size / 1000000)) MB"
