#!/usr/bin/env bash
# Device check for the fused kernels: the kernel tests (gpu-marked full shapes included)
# and benchmarks/kernels.py, with every table and log written under $OUT.
#
#   OUT=/some/dir bash benchmarks/device_check.sh
#
# On a CUDA machine it runs the compiled Triton kernels (TRITON_INTERPRET is unset) and times them;
# without a GPU it runs the same tests through the Triton interpreter and the benchmark's
# correctness-only mode, so it can be checked anywhere. Also runs on an older GPU stack (Python 3.12,
# torch 2.11, Triton 3.6; docs/environment.md): nothing here needs the project to be pip-installed.
# Knobs: PYTHON (interpreter), BENCH_ARGS (default "--step"), TEST_TIMEOUT / BENCH_TIMEOUT (seconds).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-$(mktemp -d /tmp/device_check.XXXXXX)}"
mkdir -p "$OUT"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1

has_cuda=$("$PYTHON" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
if [[ "$has_cuda" == 1 ]]; then
  unset TRITON_INTERPRET  # real kernels on the GPU
else
  export TRITON_INTERPRET=1
fi

{
  echo "date: $(date -Is)"; echo "host: $(hostname)"; echo "python: $PYTHON"
  "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0]); print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
  "$PYTHON" -c "import triton; print('triton', triton.__version__)" 2>&1 || true
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
} > "$OUT/env.txt" 2>&1

test_rc=0
if "$PYTHON" -c "import pytest" 2>/dev/null; then
  timeout "${TEST_TIMEOUT:-300}" "$PYTHON" -m pytest tests/kernels -q -rs -p no:cacheprovider \
    --junitxml "$OUT/kernel_tests.xml" > "$OUT/kernel_tests.txt" 2>&1
  test_rc=$?
  test_line=$(tail -n 1 "$OUT/kernel_tests.txt")
else
  test_line="pytest is not installed for $PYTHON: kernel tests not run (carry a pytest wheel)"
  test_rc=3
fi

# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
timeout "${BENCH_TIMEOUT:-420}" "$PYTHON" benchmarks/kernels.py --out "$OUT" ${BENCH_ARGS:---step} \
  > "$OUT/kernels_bench.log" 2>&1
bench_rc=$?

{
  echo "# Device check ($( [[ "$has_cuda" == 1 ]] && echo GPU || echo "CPU, no GPU" ))"
  echo
  echo "- kernel tests (rc=$test_rc): $test_line"
  echo "- kernel benchmark rc=$bench_rc (log: kernels_bench.log)"
  echo
  [[ -f "$OUT/kernels.md" ]] && cat "$OUT/kernels.md"
} > "$OUT/summary.md"
cat "$OUT/summary.md"
echo "device_check: tables and logs in $OUT"
[[ $test_rc == 0 && $bench_rc == 0 ]]
