#!/usr/bin/env bash
# The GPU measurements of the performance issue, in one run, for a GPU lent for minutes:
#
#   benchmarks/gpu.sh [PART...]     PART: env step epoch input (default: all four, in order)
#
#   env    versions, the GPU, and a jitted bf16 matmul (fails fast on a broken install)
#   step   train step of every preset at 224 px, bf16, against PyTorch AMP + channels_last,
#          with MFU and peak device memory (benchmarks.train_step)
#   epoch  one mek epoch at 224 px on the RAF-DB-sized synthetic set, and its input wait
#          (benchmarks.epoch; builds the set first, ~10 s on 16 cores)
#   input  host pipeline at 100 px against a PyTorch DataLoader (benchmarks.input_pipeline)
#   swin   (only when asked for) mek_swin's step at 112 px, batch 32, bf16, against PyTorch,
#          and its on-device RandAugment against Pillow (benchmarks.rand_augment)
#
# The limits below add up to 900 s. Where one command may run 600 s at most, run
# `gpu.sh env step`, then `gpu.sh epoch input` at once after it (450 s each at most).
#
# Each part runs under its own time limit; its log goes to $OUT/PART.log (OUT defaults to
# gpu_out/) and benchmarks/RESULTS.md, which the benchmarks append to, is copied there after
# each part (a step part stopped by its limit still appends the presets it timed). BATCH
# (default 64, RUL's) and WORKERS (default: half the cores) set the batch and the input
# workers. On a machine that cannot reach PyPI, put the wheels that
# launch/offline_wheels.sh fetches in .whl/: they are installed first.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-gpu_out}
PY=${PYTHON:-python3}
BATCH=${BATCH:-64}
WORKERS=${WORKERS:-$(( $(nproc) / 2 ))}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/ferjax_site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/ferjax_site:$PYTHONPATH
fi

part() {  # NAME SECONDS COMMAND...: one part under a time limit, then its log's end
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name: $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  tail -n 30 "$OUT/$name.log"
  echo "== $name: exit $rc after $((SECONDS - start)) s"
  cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
  return $rc
}

env_check() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  "$PY" - <<'EOF'
import importlib.metadata as md
import jax, jax.numpy as jnp
def version(package):
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return "missing"
print({p: version(p) for p in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
                               "tensorflow-datasets", "torch", "numpy")})
print(jax.devices())
x = jnp.ones((4096, 4096), jnp.bfloat16)
print("bf16 matmul ok:", float(jax.jit(lambda a: (a @ a).mean())(x)))
import ferjax.main  # noqa: F401  (every module the job imports)
EOF
}

export -f env_check
export PY
parts=("$@")
[[ ${#parts[@]} -eq 0 ]] && parts=(env step epoch input)
status=0
for name in "${parts[@]}"; do
  case $name in
    env) part env 120 bash -c env_check || exit 1 ;;
    step) part step 330 "$PY" -m benchmarks.train_step --presets baseline,rul_cbam,mek,rlrcnet \
            --batch "$BATCH" --image 224 --dtype bfloat16 --steps 20 --rounds 3 || status=1 ;;
    epoch) part epoch 300 "$PY" -m benchmarks.epoch --preset mek --image 224 \
             --batch "$BATCH" --dtype bfloat16 --workers "$WORKERS" || status=1 ;;
    input) part input 150 "$PY" -m benchmarks.input_pipeline --size 100 \
             --workers "$WORKERS" || status=1 ;;
    swin) part swin 300 bash -c '"$PY" -m benchmarks.train_step --presets mek_swin --batch 32 \
            --image 112 --dtype bfloat16 --steps 20 --rounds 3 &&
            "$PY" -m benchmarks.rand_augment --batch 32 --size 112' || status=1 ;;
    *) echo "unknown part $name (env, step, epoch, input, swin)"; exit 2 ;;
  esac
done
exit $status
