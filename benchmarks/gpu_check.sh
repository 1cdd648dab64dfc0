#!/usr/bin/env bash
# ScatterFormer / SLA and detector checks for a CUDA machine (budget: under 15 minutes in all).
#
#   bash benchmarks/gpu_check.sh [FRAME.bin] [OUT_DIR]
#
# 1. the SLA kernel and ScatterFormer layer tests with compiled Triton kernels on CUDA (every backend is
#    compared with the float64 reference; the Triton-on-CUDA cases cover window lengths 1..3000 and 1..8 heads);
# 2. benchmarks/sla.py on CUDA in bfloat16 (and float32) at the KITTI frame, then in bfloat16 at 131,072 voxels;
#    each prints one JSON line with medians, ratios, peak memory and bytes moved / time against the measured
#    device copy bandwidth;
# 3. the detector on CUDA: one training step and one evaluation of the KITTI config on 4 synthetic scenes
#    (examples/train_detector.py, AMP), then benchmarks/detection.py --device cuda (forward of the KITTI and
#    Waymo configs, NMS, KITTI metric, voxel encoder, Gaussian targets, each against its baseline).
# Results go to OUT_DIR (default: a new temporary directory) as gpu_check.log and *.json.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_ROOT="${GEOATTN_TEST_DATA:-$(pwd)/../shared/data}"
FRAME="${1:-$DATA_ROOT/lidar/kitti_360/velodyne/000001.bin}"
OUT_DIR="${2:-$(mktemp -d -t geoattn_gpu_check.XXXXXX)}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.log"

if [ ! -f "$FRAME" ]; then
    echo "gpu_check.sh: frame not found: $FRAME (pass it as the first argument)" >&2
    exit 2
fi
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check.sh: CUDA is not available" >&2
    exit 2
fi

{
    echo "== device"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$LOG"

# compiled kernels: the tests must not run through the interpreter
unset TRITON_INTERPRET
echo "== tests (CUDA)" | tee -a "$LOG"
status=0
timeout 300 python -m pytest -q -p no:cacheprovider \
    tests/kernels/test_sla.py tests/nn/test_scatterformer.py tests/sparse/test_window.py \
    > "$OUT_DIR/tests.log" 2>&1 || status=1
tail -n 25 "$OUT_DIR/tests.log" | tee -a "$LOG"

run_bench() {  # name, then benchmark arguments
    local name="$1"
    shift
    echo "== sla.py $name" | tee -a "$LOG"
    timeout 150 python benchmarks/sla.py --frame "$FRAME" --device cuda --repeats 20 --json "$@" \
        > "$OUT_DIR/$name.json" 2>> "$LOG" || status=1
    tee -a "$LOG" < "$OUT_DIR/$name.json"
}
run_bench kitti_bf16 --dtype bfloat16
run_bench kitti_fp32 --dtype float32
run_bench voxels131072_bf16 --dtype bfloat16 --voxels 131072

echo "== train_detector.py: one step + evaluation (CUDA)" | tee -a "$LOG"
timeout 240 python examples/train_detector.py --config kitti_scatterformer --synthetic 4 --epochs 1 \
    --batch-size 2 --stop-after 1 --workers 0 --device cuda --out "$OUT_DIR/det" --json \
    > "$OUT_DIR/train_detector.log" 2>&1 || status=1
tail -n 3 "$OUT_DIR/train_detector.log" | tee -a "$LOG"

echo "== detection.py (CUDA)" | tee -a "$LOG"
timeout 240 python benchmarks/detection.py --frame "$FRAME" --device cuda --json \
    > "$OUT_DIR/detection.json" 2>> "$LOG" || status=1
tee -a "$LOG" < "$OUT_DIR/detection.json"

echo "== done (status $status): results in $OUT_DIR" | tee -a "$LOG"
exit "$status"
