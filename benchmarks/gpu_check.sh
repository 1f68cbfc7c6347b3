#!/usr/bin/env bash
# The GPU check: one command that tests and measures recolab's GPU path on a bare GPU machine.
#
#   bash benchmarks/gpu_check.sh --wheels    # here, with pip and PyPI: fetch the wheels into .whl/
#   bash benchmarks/gpu_check.sh             # there: install .whl/, pytest -m gpu, measure
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: the same, tiny, on the CPU if no GPU
#
# The GPU machine is expected to hold python3 with torch (CUDA), pytorch-lightning, numpy,
# pandas, pyarrow, scikit-learn, scipy, matplotlib, PyYAML and pytest, and no package registry:
# what else recolab and the check need (omegaconf, hydra-core, faiss-cpu, torch-rechub, ~20 MB)
# travels as wheels in .whl/ (git-ignored through .git/info/exclude) and is installed into
# /tmp/recolab-site, never over the machine's own packages. MLflow is not needed: the check
# trains through Lightning directly, with no tracking.
#
# Steps, each with its own time limit so the whole run stays under 8 minutes on an H200:
#   1. install the carried wheels (20 s at most);
#   2. pytest -m gpu on tests/gpu (75 s at most);
#   3. benchmarks/gpu_bench.py: its stages (env, world, train, ddp, retrieval, metrics, rechub;
#      375 s together at most, each budgeted there), writing experiments/bench/gpu.md.
# At most 470 s in all, plus python's start; the stages usually end well before their budgets.
# The report comes with gpu.json beside it (every figure, each stage's status, the output of
# failed stages). $OUT, where set (the device tool's output folder), receives those two and
# gpu_pytest.log. Exit status: 0 when the tests passed and every stage finished, else 1.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

MODE=full
case "${1:-}" in
  --wheels) MODE=wheels ;;
  --dry-run) MODE=dry ;;
  "") ;;
  *) echo "usage: $0 [--wheels | --dry-run]" >&2; exit 2 ;;
esac

# Wheels for the GPU machine's python (3.12, x86-64, manylinux), one version each.
WHEELS=(omegaconf==2.3.0 hydra-core==1.3.2 faiss-cpu==1.15.1 torch-rechub==0.9.0)
if [ "$MODE" = wheels ]; then
  PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
  mkdir -p .whl
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}" || exit 1
  # omegaconf's parser runtime exists only as a source archive: built here (pure Python).
  "$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 || exit 1
  ls -l .whl && du -sh .whl
  exit 0
fi

if [ "$MODE" = dry ]; then
  PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
  export RECOLAB_GPU_TESTS_ON_CPU=1
  REPORT=${GPU_CHECK_REPORT:-${OUT:-/tmp}/gpu_dryrun.md}
  SCALE=1
  LIMIT=900
else
  PY=${PYTHON:-python3}
  REPORT=${GPU_CHECK_REPORT:-experiments/bench/gpu.md}
  SCALE=${GPU_CHECK_BUDGET_SCALE:-1}
  LIMIT=390
fi
T0=$(date +%s)
echo "== $(date -u) recolab GPU check ($MODE) with $PY"

if [ "$MODE" = full ] && compgen -G ".whl/*.whl" > /dev/null; then
  echo "== 1. installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/recolab-site"
  timeout 20 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/recolab-site .whl/*.whl || echo "   wheel install failed: going on without them"
  export PYTHONPATH=/tmp/recolab-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$ROOT/src:$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
"$PY" -c "import torch; print('   torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"

echo "== 2. pytest -m gpu"
LOG=${OUT:-/tmp}/gpu_pytest.log
timeout 75 "$PY" -m pytest -q -m gpu -p no:cacheprovider --confcutdir=tests/gpu tests/gpu 2>&1 | tee "$LOG"
TESTS=${PIPESTATUS[0]}
echo "   pytest exit $TESTS"

echo "== 3. measurements -> $REPORT"
BENCH_ARGS=(--out "$REPORT" --budget-scale "$SCALE")
[ "$MODE" = dry ] && BENCH_ARGS+=(--dry-run)
timeout "$LIMIT" "$PY" benchmarks/gpu_bench.py "${BENCH_ARGS[@]}"
BENCH=$?
if [ -n "${OUT:-}" ] && [ -f "$REPORT" ]; then cp "$REPORT" "${REPORT%.md}.json" "$OUT/" 2>/dev/null; fi
echo "== done in $(( $(date +%s) - T0 )) s: pytest exit $TESTS, measurements exit $BENCH"
[ "$TESTS" = 0 ] && [ "$BENCH" = 0 ]
