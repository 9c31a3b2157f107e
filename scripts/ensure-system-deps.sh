#!/usr/bin/env bash
# Installs the system programs meshenc needs when they are missing: the etcd server (tests and
# the demo start real etcd), nginx (tests start it as a local HTTP origin that takes PUT; on
# Debian bookworm the `nginx` package's own binary is built with the WebDAV module, and
# nginx-light is only `nginx` plus the echo module), chromium (the browser that plays the
# origin's stream, driven by Playwright: Debian's build, with H.264 and AAC), npm (installs
# the pinned hls.js) and ffmpeg (a test has ffprobe read the CMAF segments; the encoder
# benchmark's baseline); with --compiler instead gcc and the Python headers
# (scripts/compile-hot-path.sh compiles the mesh's hot path with them, for the benchmarks and
# the image), and with --venv the python3-venv package (when `python3 -m venv` failed).
# Debian/Ubuntu only; elsewhere it says what to install and fails.
set -euo pipefail

missing=()
compiler() {
  command -v gcc >/dev/null 2>&1 || missing+=(gcc)
  python3 -c "import sysconfig, os, sys; sys.exit(not os.path.exists(
    os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" 2>/dev/null || missing+=(python3-dev)
}
programs() {
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  # Debian puts nginx in /usr/sbin, which is not on a non-root user's PATH.
  command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
  command -v chromium >/dev/null 2>&1 || [[ -x /usr/lib/chromium/chromium ]] || missing+=(chromium)
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
}
case "${1:-}" in
  --venv) missing+=(python3-venv) ;;  # the caller already found `python3 -m venv` failing
  --compiler) compiler ;;
  *) programs ;;
esac
[[ ${#missing[@]} -eq 0 ]] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "meshenc needs: ${missing[*]} (Debian package names). Install them with your system's" >&2
  echo "package manager and run make again." >&2
  exit 1
fi
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo=(sudo)
  else
    echo "meshenc needs: ${missing[*]}; run as root or install them: apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
echo "Installing ${missing[*]} (apt-get)..."
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
