#!/usr/bin/env bash
# Fills a wheelhouse for the image build, on this machine, so that the build itself needs no
# package index: the container build installs from it with `pip install --no-index`, and the
# image holds exactly the versions constraints.txt pins.
#
#   scripts/fetch-image-wheels.sh DIR
#
# DIR receives wheels of: the project's runtime dependencies (from pyproject.toml), the
# protocol code generator (grpcio-tools, mypy-protobuf) and the build backend the project's
# pyproject.toml names. Packages without a wheel for Linux/CPython 3.11 are built here.
# Uses $PYTHON (default: the project's virtualenv), whose Python must be 3.11 like the image's.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
dir="${1:?usage: fetch-image-wheels.sh DIR}"
PYTHON="${PYTHON:-.venv/bin/python}"

version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [[ "$version" != "3.11" ]]; then
  echo "fetch-image-wheels: $PYTHON is Python $version; the image runs 3.11" >&2
  exit 1
fi

# The build backend is not in constraints.txt (pip never installs it into an environment);
# pin it here so that the image's build is as repeatable as its contents.
BUILD_BACKEND=(setuptools==80.9.0 wheel==0.45.1)

requirements="$(mktemp)"
trap 'rm -f "$requirements"' EXIT
"$PYTHON" - "$requirements" <<'EOF'
import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)
lines = [*project["project"]["dependencies"], "grpcio-tools", "mypy-protobuf"]
with open(sys.argv[1], "w") as out:
    out.write("\n".join(lines) + "\n")
EOF

mkdir -p "$dir"
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$dir" \
  --constraint constraints.txt --requirement "$requirements" "${BUILD_BACKEND[@]}"
echo "wheelhouse $dir: $(find "$dir" -name '*.whl' | wc -l) wheels, $(du -sh "$dir" | cut -f1)"
