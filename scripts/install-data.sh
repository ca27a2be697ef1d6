#!/usr/bin/env bash
# Install Fashion-MNIST from Debian's package where apt is available; otherwise say how
# the harness will find it (RBFM_DATA_DIR, the user cache, or `run --download`).
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/t10k-labels-idx1-ubyte.gz" ] && [ -f "$dir/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
bash "$(dirname "$0")/apt-install.sh" dataset-fashion-mnist "into $dir" && exit 0
echo "note: Fashion-MNIST is not in $dir and apt-get is not usable here;" \
  "set RBFM_DATA_DIR to a folder with the four .gz files, or let 'run --download' fetch them" >&2
