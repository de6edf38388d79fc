#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (CI has no GPU; run this where one is present):
#   1. the tests marked `gpu` (AMP with GradScaler, CPU/GPU forward parity, the training command per method,
#      resume after SIGKILL);
#   2. a test run with the GPU visible, where every config defaults to cuda:0: the pytest arguments given after
#      OUT_DIR, else the default test run less the code-format check (its pinned tools are not needed here);
#   3. the README's training command on the shipped sample, float32 and AMP, each evaluated on the sample's
#      test split (real LiteMedSAM weights);
#   4. the benchmarks' GPU tables (hypergradient cost, embedding cache, inference per image).
# Each step has its own time limit and log (OUT_DIR/<step>.log); a failing step does not stop the later ones;
# OUT_DIR/summary.txt lists the device, the versions and each step's exit status and time.
# GPU_CHECKS_STEPS, a space-separated list of step names (gpu_tests tests sample_fp32 sample_amp
# bench_hypergradient bench_embedding_cache bench_inference), runs only those: a session with little device
# time left runs the steps it has not measured yet.
#
#     bash scripts/gpu_checks.sh OUT_DIR [PYTEST_ARGS...]
#     GPU_CHECKS_STEPS="sample_fp32 bench_inference" bash scripts/gpu_checks.sh OUT_DIR
set -uo pipefail
out=${1:?usage: bash scripts/gpu_checks.sh OUT_DIR [PYTEST_ARGS...]}
shift
py=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore PYTHON=$py
work=$(mktemp -d)

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, record the status
    local name=$1 limit=$2
    shift 2
    if [ -n "${GPU_CHECKS_STEPS:-}" ] && [[ " $GPU_CHECKS_STEPS " != *" $name "* ]]; then
        echo "$name: not selected (GPU_CHECKS_STEPS)" >>"$out/summary.txt"
        return
    fi
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    "$py" -c "import torch, monai, ignite; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__, 'ignite', ignite.__version__)"
} >"$out/summary.txt" 2>&1

pytest=("$py" -m pytest -p no:cacheprovider --import-mode=importlib -rA -q)
step gpu_tests 180 "${pytest[@]}" -m gpu -n 8 --dist load tests/
if [ $# -gt 0 ]; then
    step tests 180 "${pytest[@]}" -m "not slow" "$@"
else
    step tests 240 "${pytest[@]}" -m "not slow" -n 12 --dist loadfile tests/ --deselect tests/test_code_format.py
fi

sample_cmd() {  # sample_cmd AMP FOLDER: train on the shipped sample, then evaluate the final weights on its test split
    "$PYTHON" -m monai.bundle run training --config_file configs/train.json --amp "$1" \
        --ckpt_dir "$2/models" --output_dir "$2/train" &&
        "$PYTHON" -m monai.bundle run evaluating --config_file "['configs/train.json','configs/evaluate.json']" \
            --amp "$1" --ckpt_path "$2/models/model_final.pt" --output_dir "$2/eval"
}
export -f sample_cmd
step sample_fp32 120 bash -c 'sample_cmd "$@"' sample False "$work/fp32"
step sample_amp 120 bash -c 'sample_cmd "$@"' sample True "$work/amp"

step bench_hypergradient 90 "$py" scripts/benchmark_hypergradient.py --iterations 20 \
    --out "$out/benchmark_hypergradient.md"
step bench_embedding_cache 60 "$py" scripts/benchmark_embedding_cache.py --steps 20 \
    --out "$out/benchmark_embedding_cache.md"
step bench_inference 120 "$py" scripts/benchmark_inference.py --images bundle/sample_data/jsrt/images \
    --n_images 16 --batches 1 4 --no_server --device cuda --out "$out/benchmark_inference.md"
cat "$out/summary.txt"
