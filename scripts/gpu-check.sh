#!/usr/bin/env bash
# `make gpu-check`: on a machine with a CUDA GPU, in under 8 minutes, the CUDA paths measured for real:
#   1. the CUDA property tests (perturbations on cuda equal cpu, deterministic per seed);
#   2. `bench` on cuda for every registered model (throughput.csv under $OUT or /tmp);
#   3. the lighting sweep on cuda with CPU-trained weights (trained here on the CPU first, a short
#      recipe), whose accuracies must equal the CPU sweep's within 0.05 points in every cell;
#   4. stored records made on cuda: a short run on cuda, then `verify` of its report re-evaluates a
#      sample of every record on cuda (must match), and once more on the CPU (printed: how many
#      of a cuda record's predictions the CPU gives differently).
# Prints one summary line per step; exits non-zero if a step fails. DATA_DIR, where the full data
# cannot travel, names a subset (scripts/data_subset.py) that steps 2 and 3 read unverified.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.venv/bin}"
OUT="${OUT:-/tmp/rbfm-gpu-check}"
mkdir -p "$OUT"
experiment=experiments/gpu_check.yaml
sweep_data=()
if [[ -n "${DATA_DIR:-}" ]]; then
  DATA_DIR="$(realpath "$DATA_DIR")"  # the YAML written under $OUT takes relative paths from there
  experiment="$OUT/gpu_check.yaml"
  printf '%s\ndata: {dir: %s, verify: false}\n' "$(cat experiments/gpu_check.yaml)" "$DATA_DIR" > "$experiment"
  sweep_data=(--data-dir "$DATA_DIR")
fi
"$BIN/python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "gpu-check: no CUDA device visible")'
"$BIN/python" -c 'import torch; print("gpu-check:", torch.cuda.get_device_name(0), "torch", torch.__version__)'
start=$(date +%s)
timeout 180 "$BIN/python" -m pytest -q -p no:cacheprovider -m gpu tests/test_perturbations.py 2>&1 | tail -3
echo "gpu-check: CUDA property tests done in $(( $(date +%s) - start )) s"
timeout 240 "$BIN/python" -m robustbench_fmnist -q bench "$experiment" --device cuda \
  --output-dir "$OUT" --cache-dir "$OUT/cache" | tee "$OUT/bench.txt" | tail -40
echo "gpu-check: bench on cuda done in $(( $(date +%s) - start )) s"
timeout 300 "$BIN/python" scripts/gpu_sweep_check.py --output-dir "$OUT" "${sweep_data[@]}"
echo "gpu-check: lighting sweep cuda vs cpu done in $(( $(date +%s) - start )) s"
records="$OUT/gpu_records.yaml"
printf 'name: gpu_records\ndevice: cuda\nseed: 0\nmodels: [{name: baseline_cnn, train: {epochs: 1, train_images: 5000}}]\n' > "$records"
printf 'perturbations: [brightness_up, contrast_down, rotation]\n' >> "$records"
if [[ -n "${DATA_DIR:-}" ]]; then printf 'data: {dir: %s, verify: false}\n' "$DATA_DIR" >> "$records"; fi
timeout 120 "$BIN/python" -m robustbench_fmnist -q run "$records" --output-dir "$OUT" --cache-dir "$OUT/records-cache"
timeout 60 "$BIN/python" -m robustbench_fmnist -q verify "$OUT/gpu_records" --sample 1000
echo "gpu-check: records made on cuda verified on cuda in $(( $(date +%s) - start )) s"
CUDA_VISIBLE_DEVICES="" timeout 60 "$BIN/python" -m robustbench_fmnist -q verify "$OUT/gpu_records" --sample 1000 \
  || echo "gpu-check: (informative) the CPU predicts some of the cuda records' sampled images differently"
echo "gpu-check: all steps passed in $(( $(date +%s) - start )) s"
