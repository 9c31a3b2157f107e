# syntax=docker/dockerfile:1
# The one image every meshenc service runs from, in the same form as local mode:
#   meshenc encoder | meshenc registry | meshenc manager | meshenc health-check ADDRESS [SERVICE]
# Build from the repository root:  docker build -t meshenc:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: generate the protocol code and install the project into a virtualenv -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# The generator (grpcio-tools, mypy-protobuf) lives in this stage only, pinned like the rest.
COPY constraints.txt ./
RUN python -m venv /opt/protoc \
 && /opt/protoc/bin/pip install --constraint constraints.txt grpcio-tools mypy-protobuf

COPY pyproject.toml README.md ./
COPY scripts/gen_proto.sh scripts/
COPY proto/ proto/
COPY meshenc/ meshenc/
COPY services/ services/
RUN PYTHON=/opt/protoc/bin/python scripts/gen_proto.sh \
 && python -m venv /opt/meshenc \
 && /opt/meshenc/bin/pip install --constraint constraints.txt . \
 && /opt/meshenc/bin/meshenc --version

# --- runtime: the virtualenv alone, run by an unprivileged user ------------------------------
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="meshenc" \
      org.opencontainers.image.description="A mesh of live video encoders that keep their outputs frame-locked" \
      org.opencontainers.image.licenses="Apache-2.0"

# The user the Helm chart's security context names (runAsUser/runAsGroup 10001).
RUN groupadd --system --gid 10001 meshenc \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin meshenc

COPY --from=build /opt/meshenc /opt/meshenc
# The root filesystem is read-only in the cluster: nothing may want to write beside the code.
ENV PATH=/opt/meshenc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
WORKDIR /tmp
USER 10001:10001
# gRPC: encoder, registry, manager; Prometheus metrics.
EXPOSE 7400 7500 7600 9464
ENTRYPOINT ["meshenc"]
CMD ["--help"]
