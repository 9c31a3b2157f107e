#!/usr/bin/env bash
# Makes the image's base without any container registry: a minimal Debian bookworm root file
# system with Python 3.11 (the same release python:3.11-slim-bookworm is built on), made by
# mmdebstrap from this machine's own Debian package sources (read from its apt configuration),
# then imported as an image.
#
#   scripts/build-base-image.sh TAG [ENGINE...]   e.g.  scripts/build-base-image.sh meshenc-base:bookworm podman
#
# Needs mmdebstrap (scripts/ensure-image-deps.sh installs it) and a Debian bookworm host, whose
# apt sources are valid for bookworm. About 35 s and 130 MB.
set -euo pipefail

tag="${1:?usage: build-base-image.sh TAG [ENGINE...]}"
shift
engine=("${@:-podman}")
suite=bookworm

# shellcheck disable=SC1091  # the machine's own release file
codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
if [[ "$codename" != "$suite" ]]; then
  echo "build-base-image: the base is made from this machine's apt sources, which are for" >&2
  echo "'${codename:-unknown}', not $suite; build with a registry's base instead:" >&2
  echo "  make image MESHENC_BASE=python" >&2
  exit 1
fi

# Every active source file of the machine (one-line or deb822 style), pasted into the new root
# file system's apt configuration in this order.
sources=()
for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
  [[ -f "$file" ]] && grep -qE '^[[:space:]]*(deb[[:space:]]|Types:)' "$file" && sources+=("$file")
done
if [[ ${#sources[@]} -eq 0 ]]; then
  echo "build-base-image: no active apt source in /etc/apt" >&2
  exit 1
fi

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT

# The merged-/usr layout made by mmdebstrap's own hook, not by the usrmerge package, which
# would pull in perl (48 MB) that nothing needs once the layout exists.
hooks="$(dirname "$(command -v mmdebstrap)")/../share/mmdebstrap/hooks/merged-usr"

# minbase: essential packages and apt only (the hook's "$1" is the new root, expanded by
# mmdebstrap, hence the single quotes); python3-venv brings ensurepip's pip wheel.
# Documentation, man pages and locales are left out, as the slim images do.
# shellcheck disable=SC2016
mmdebstrap --quiet --variant=minbase --hook-dir="$hooks" \
  --include=python3,python3-venv,python-is-python3,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  "$suite" "$workdir/rootfs.tar" "${sources[@]}"

"${engine[@]}" import \
  --change 'CMD ["python3"]' \
  --change 'ENV LANG=C.UTF-8' \
  "$workdir/rootfs.tar" "$tag" >/dev/null
echo "base image $tag: Debian $suite from this machine's apt sources"
