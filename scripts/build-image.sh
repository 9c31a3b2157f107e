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
compiled="$(mktemp -d)"
trap 'rm -rf "$wheels" "$compiled"' EXIT
PYTHON="$PYTHON" scripts/fetch-image-wheels.sh "$wheels"

# The mesh's hot path compiled (build/compiled, `make compiled`) goes into the image beside its
# sources, when it was compiled from this tree's sources; the image keeps it where its Python can
# import it, and otherwise runs the pure modules (the Dockerfile).
stage_compiled() {
  local module source
  [[ -f build/compiled/.made ]] && compgen -G 'build/compiled/*__mypyc.*.so' >/dev/null \
    || { echo "nothing compiled in build/compiled (make compiled)"; return 1; }
  while IFS= read -r module; do
    source="${module%%.cpython-*}.py"
    cmp -s "$source" "${source#build/compiled/}" \
      || { echo "${source#build/compiled/} changed since build/compiled was made"; return 1; }
  done < <(find build/compiled/meshenc build/compiled/services -name '*.so')
  (cd build/compiled && find . -name '*.so' -exec cp --parents {} "$compiled"/ \;)
}
if ! why="$(stage_compiled)"; then
  rm -rf "${compiled:?}"/*
  echo "image: the mesh's hot path goes in pure: $why"
fi
hot_path_digest="$(cd "$compiled" && find . -type f -print0 | sort -z | xargs -0r sha256sum \
  | sha256sum | cut -c1-16)"

tags=(--tag "$image")
# A Kubernetes node reads the short name meshenc:X as docker.io/library/meshenc:X; podman would
# name it localhost/meshenc:X, so give it the node's name too (what `podman save` should write).
if [[ "${engine[0]}" == podman && "$image" != */* ]]; then
  tags+=(--tag "docker.io/library/$image")
fi
previous="$("${engine[@]}" image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
"${engine[@]}" build "${build_flags[@]}" --quiet \
  --build-arg PYTHON_IMAGE="$base" --build-context wheels="$wheels" \
  --build-context compiled="$compiled" --build-arg HOT_PATH_DIGEST="$hot_path_digest" \
  "${tags[@]}" . >/dev/null
# The image this build replaced is now untagged: remove it, unless a container still uses it,
# so that rebuilds do not pile up half a gigabyte each.
current="$("${engine[@]}" image inspect --format '{{.Id}}' "$image")"
if [[ -n "$previous" && "$previous" != "$current" ]]; then
  "${engine[@]}" rmi "$previous" >/dev/null 2>&1 || true
fi

size="$("${engine[@]}" image inspect --format '{{.Size}}' "$image")"
# What the image's encoders run, as its build found (read without starting a container).
container="$("${engine[@]}" create "$image")"
hot_path="$("${engine[@]}" cp "$container:/opt/meshenc/hot-path" - | tar -xO)"
"${engine[@]}" rm "$container" >/dev/null
echo "image $image built in $((SECONDS - started)) s with ${engine[0]} on $base:" \
  "$((size / 1000000)) MB; mesh hot path $hot_path"
