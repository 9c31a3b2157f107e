# syntax=docker/dockerfile:1
# The one image every meshenc service runs from, in the same form as local mode:
#   meshenc encoder | registry | manager | source | health-check ADDRESS [SERVICE]
# Build it with `make image` (scripts/build-image.sh): podman, or docker where a daemon runs.
# The build is hermetic: it reads no package index. Every Python package comes from a
# wheelhouse filled beforehand by scripts/fetch-image-wheels.sh with the versions
# constraints.txt pins, handed in as the build context named "wheels", and the mesh's hot path
# compiled (below) as the one named "compiled", an empty folder for none:
#   docker build --build-context wheels=WHEELHOUSE --build-context compiled=DIR -t meshenc:0.1.0 .
# PYTHON_IMAGE is any Debian bookworm image with Python 3.11 and its venv module: the registry's
# python:3.11-slim-bookworm, or one made from Debian packages (scripts/build-base-image.sh).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: generate the protocol code and install the project into a virtualenv -------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels
WORKDIR /src
COPY --from=wheels . /wheels

# The generator (grpcio-tools, mypy-protobuf) lives in this stage only, pinned like the rest.
COPY constraints.txt pyproject.toml ./
RUN python -m venv /opt/protoc \
 && /opt/protoc/bin/pip install --quiet --constraint constraints.txt grpcio-tools mypy-protobuf

# The runtime dependencies, in a layer that only a change of pyproject.toml or constraints.txt
# rebuilds. The runtime virtualenv gets no pip, setuptools or wheel (the generator's pip installs
# into it), and none of what a running service never reads: the test suites of numpy and
# matplotlib, C headers. Bytecode is compiled here, because the root file system is read-only
# at run time and every start would otherwise compile it again.
RUN /opt/protoc/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
      > /tmp/requirements.txt \
 && python -m venv --without-pip /opt/meshenc \
 && /opt/protoc/bin/pip --python /opt/meshenc/bin/python install --quiet --no-compile \
      --constraint constraints.txt --requirement /tmp/requirements.txt \
 && site="$(/opt/meshenc/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && rm -rf "$site"/numpy/tests "$site"/numpy/*/tests "$site"/numpy/_core/include \
      "$site"/matplotlib/tests "$site"/mpl_toolkits/*/tests \
 && /opt/meshenc/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
      /opt/meshenc/lib >/dev/null

# The project itself on top (its dependencies are in place: nothing to resolve), then a check
# that they are all it needs.
COPY README.md ./
COPY scripts/gen_proto.sh scripts/
COPY proto/ proto/
COPY meshenc/ meshenc/
COPY services/ services/
# The mesh's hot path compiled with mypyc, when the build hands it in (the build context
# "compiled": scripts/build-image.sh fills it from build/compiled, compiled from these very
# sources, or leaves it empty): each extension beside its source, which it shadows on import;
# the encoders then log "mesh hot path compiled". Extensions this Python cannot import (made
# for another Python or C library) are removed again, and the pure modules run.
# /opt/meshenc/hot-path says which (`-P`: the sources in /src, the working folder, are not the
# installed package). HOT_PATH_DIGEST is a digest of what the context holds: a build cache may
# not look into a named context's files, and a changed digest makes it copy them again.
ARG HOT_PATH_DIGEST=none
RUN echo "compiled hot path handed in: ${HOT_PATH_DIGEST}"
COPY --from=compiled . /compiled
RUN PYTHON=/opt/protoc/bin/python scripts/gen_proto.sh >/dev/null \
 && /opt/protoc/bin/pip --python /opt/meshenc/bin/python install --quiet --no-compile --no-deps . \
 && /opt/protoc/bin/pip --python /opt/meshenc/bin/python check \
 && site="$(/opt/meshenc/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
 && cp -r /compiled/. "$site"/ \
 && modules="$(cd /compiled && find meshenc services -name '*.so' 2>/dev/null \
      | sed 's|/|.|g; s|\.cpython-.*||')" \
 && if [ -n "$modules" ] && ! /opt/meshenc/bin/python -P -c \
      'import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]' $modules; then \
      echo "the compiled hot path does not import here (above): the pure modules run"; \
      (cd /compiled && find . -name '*.so' -exec rm -f "$site/{}" \;); \
    fi \
 && /opt/meshenc/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash \
      "$site"/meshenc "$site"/services >/dev/null \
 && /opt/meshenc/bin/meshenc --version \
 && /opt/meshenc/bin/python -P -c 'from meshenc.wire import hot_path; print(hot_path.describe())' \
      > /opt/meshenc/hot-path

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
