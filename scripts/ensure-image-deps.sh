#!/usr/bin/env bash
# Installs what building and running the image needs when it is missing: podman with the runc
# runtime and catatonit (unless a docker daemon answers), and with --base also mmdebstrap, which makes the
# base image from Debian packages when no container registry can be reached.
# Debian/Ubuntu only; elsewhere it says what to install and fails (as ensure-system-deps.sh).
set -euo pipefail

missing=()
if ! docker info >/dev/null 2>&1; then
  command -v podman >/dev/null 2>&1 || missing+=(podman)
  # runc, not crun: crun cannot set up containers on hosts with mixed cgroup v1/v2 hierarchies.
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  # The init process of podman's pods (kube play); only recommended by the podman package.
  command -v catatonit >/dev/null 2>&1 || [[ -x /usr/libexec/podman/catatonit ]] || missing+=(catatonit)
fi
if [[ "${1:-}" == --base ]]; then
  command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
fi
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "the meshenc image needs: ${missing[*]} (Debian package names). Install them with your" >&2
  echo "system's package manager and run make again." >&2
  exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "the meshenc image needs: ${missing[*]}; run as root or install them: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
echo "Installing ${missing[*]} (apt-get)..."
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
