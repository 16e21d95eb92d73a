#!/usr/bin/env bash
# One prepared call of benchmarks/gpu_truth.py on a lent GPU machine (docs/benchmarks.md, "GPU"): every step
# in turn inside one deadline, the small results (profiles, plans, reports; no checkpoints) tarred into
# $OUT/gt.tgz after each step so a step cut short by the deadline keeps the ones before it.
#
#   device run, carry [".whl"]:  bash benchmarks/gpu_truth_session.sh 540
#
# .whl holds the wheels the machine lacks or has at another version than requirements/dev.lock (transformers
# 5.25.0 and what it needs, typer, rich, pydantic, compressed-tensors): see the device notes on carrying wheels.
set -u
DEADLINE_S=${1:-540}
BASE=${BASE:-h200}
DIR=${DIR:-/tmp/gt}
WHEELS=${WHEELS:-.whl}
EXTRA=${EXTRA:-}   # EXTRA=--dry-run checks the script on a CPU (tiny checkpoints; numbers meaningless)
LOG=$OUT/log
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$LOG" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
torch.cuda.get_device_name())" >>"$LOG" 2>&1
nproc >>"$LOG"; free -g >>"$LOG"

save() {
  tar czf "$OUT/gt.tgz" -C "$DIR" --exclude=./v4 --exclude=./v41 --exclude='./syn-*' --exclude=./qsrc \
    --exclude=./qout --exclude=./copy.bin .
}
left() { echo $((DEADLINE_S - SECONDS)); }
step() {   # step NAME [more gpu_truth.py options]
  echo "== $1 at ${SECONDS} s" >>"$LOG"
  timeout "$(left)" python3 benchmarks/gpu_truth.py "$@" --base "$BASE" --dir "$DIR" --tokens 32 --trials 2 $EXTRA \
    >>"$LOG" 2>&1
  echo "== $1 rc $? at ${SECONDS} s" >>"$LOG"
  save
}

for name in probe make calibrate plans run report; do
  [ "$(left)" -gt 10 ] && step "$name"
done
python3 benchmarks/gpu_truth.py report --base "$BASE" --dir "$DIR" $EXTRA >"$OUT/report.md" 2>&1
if [ "$(left)" -gt 60 ]; then   # the GPU tests (CI has no GPU: they skip there)
  timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests >"$OUT/pytest-gpu.log" 2>&1
  echo "== pytest -m gpu rc $? at ${SECONDS} s" >>"$LOG"
fi
[ "$(left)" -gt 30 ] && step quant
python3 benchmarks/gpu_truth.py report --base "$BASE" --dir "$DIR" $EXTRA >"$OUT/report.md" 2>&1
echo "== done at ${SECONDS} s" >>"$LOG"
