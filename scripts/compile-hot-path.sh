#!/usr/bin/env bash
# Compiles the mesh's hot path with mypyc (it comes with mypy, in the dev extras): the sync
# engine and the core modules it runs on every event, the wire's conversion and validation of
# every ESP an encoder sends and receives, and the simulator's runner and world. The result is
# build/compiled, a copy of the code (meshenc, services, tests) with a C extension beside the
# source of each compiled module. The source tree is left alone: `make test` and every command
# run the pure-Python modules, and an edit to the core can never be shadowed by a stale
# extension. Only a command started with PYTHONPATH=build/compiled runs the compiled modules,
# and so do the processes it starts (`meshenc up`'s encoders); `make bench` runs the simulator's
# benchmarks and one encoder benchmark so, and `make image` puts the extensions in the image
# (scripts/build-image.sh). `meshenc bench simspeed`, `meshenc bench encoder` and
# an encoder's start-up log line say which ran. To test the compiled modules, run the tests of
# the copy from inside it:
#   cd build/compiled && ../../.venv/bin/python -m pytest tests/core tests/wire tests/sim
#
# Where compiling is not possible (no mypyc, no C compiler, no Python headers) it says why,
# leaves no build/compiled and exits 0: the same commands then run the pure modules, with the
# same results, more slowly. Prints how long compiling took.
set -euo pipefail

PY=${PYTHON:-python3}
# mypyc runs from inside $OUT: a relative interpreter path (the Makefile's .venv/bin/python) would
# not be found there. Made absolute without resolving links, so a virtualenv stays itself.
if [[ $PY == */* && $PY != /* ]]; then PY="$PWD/$PY"; fi
OUT=build/compiled
MODULES=(
  meshenc/core/engine.py meshenc/core/anchor.py meshenc/core/capture.py
  meshenc/core/clock.py meshenc/core/confidence.py meshenc/core/kalman.py
  meshenc/core/link.py meshenc/core/machine.py meshenc/core/messages.py
  meshenc/core/parameters.py meshenc/core/phases.py meshenc/core/policy.py
  meshenc/core/robust.py meshenc/core/timecode.py meshenc/core/timeline.py
  meshenc/core/votes.py
  meshenc/sim/runner.py meshenc/sim/world.py
  meshenc/wire/convert.py meshenc/wire/validation.py
)

pure() {
  echo "compile-hot-path: $1; everything runs as pure Python" >&2
  rm -rf "$OUT"
  exit 0
}

"$PY" -c "import mypyc" 2>/dev/null || pure "mypyc is not installed (it comes with mypy)"
command -v "${CC:-gcc}" >/dev/null 2>&1 || pure "no C compiler (${CC:-gcc})"
headers=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
[[ -f $headers/Python.h ]] || pure "no Python headers in $headers (Debian: python3-dev)"

started=$(date +%s)
rm -rf "$OUT"
mkdir -p "$OUT"
# All the code, so that everything imported from build/compiled is the current code.
cp -r meshenc services tests pyproject.toml "$OUT"/
find "$OUT" -name __pycache__ -prune -exec rm -rf {} +
# mypyc type-checks only the modules it compiles: the sections for the others are unused there.
sed -i 's/^warn_unused_configs = true/warn_unused_configs = false/' "$OUT/pyproject.toml"
log=$(mktemp)
if ! (cd "$OUT" && "$PY" -m mypyc "${MODULES[@]}") >"$log" 2>&1; then
  grep -E "error|Error" "$log" | head -20 >&2 || true
  rm -f "$log"
  pure "mypyc failed (above)"
fi
rm -rf "$log" "$OUT/build"
echo "compile-hot-path: ${#MODULES[@]} modules compiled into $OUT in $(($(date +%s) - started)) s"
