#!/usr/bin/env bash
# ONNX Runtime's throughput beside the torch path's, for one architecture: its untrained weights saved as a
# checkpoint and exported to ONNX, then `bench` on both in one run (throughput does not depend on the weights).
# Usage: bash scripts/onnx-vs-torch.sh [architecture] [output folder]   (defaults: baseline_cnn, /tmp/onnx-vs-torch)
set -euo pipefail
BIN="${BIN:-.venv/bin}"
ARCH="${1:-baseline_cnn}"
OUT="${2:-/tmp/onnx-vs-torch}"
mkdir -p "$OUT"
"$BIN/python" - "$ARCH" "$OUT" <<'PY'
import sys
from pathlib import Path

import torch
import yaml

from robustbench_fmnist.models.registry import create_model

arch, out = sys.argv[1], Path(sys.argv[2])
torch.manual_seed(0)
model = create_model(arch).eval()
torch.save(model.state_dict(), out / "weights.pt")
torch.onnx.export(model, torch.rand(2, 1, 28, 28), str(out / "model.onnx"), input_names=["images"],
                  output_names=["logits"], dynamic_axes={"images": {0: "n"}}, dynamo=False)
experiment = {
    "name": f"onnx_vs_torch_{arch}",
    "models": [{"name": f"{arch}_torch", "architecture": arch, "checkpoint": "weights.pt"},
               {"name": f"{arch}_onnx", "onnx": "model.onnx"}],
    "perturbations": ["brightness_up", "rotation"],
    "evaluation": {"batch_size": 1000},
    "throughput": {"devices": ["cpu"], "batch_sizes": [1, 256, 1000], "dtypes": ["float32"]},
    "output_dir": "reports",
    "cache_dir": "cache",
}
(out / "experiment.yaml").write_text(yaml.safe_dump(experiment, sort_keys=False))
PY
"$BIN/python" -m robustbench_fmnist -q bench "$OUT/experiment.yaml"
