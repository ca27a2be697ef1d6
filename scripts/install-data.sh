#!/usr/bin/env bash
# Install Fashion-MNIST from Debian's package where apt is available; otherwise say how
# the harness will find it (RBFM_DATA_DIR, the user cache, or `run --download`).
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/t10k-labels-idx1-ubyte.gz" ] && [ -f "$dir/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; else sudo="none"; fi
  if [ "$sudo" != "none" ]; then
    echo "installing Debian package dataset-fashion-mnist into $dir"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
    exit 0
  fi
fi
echo "note: Fashion-MNIST is not in $dir and apt-get is not usable here;" \
  "set RBFM_DATA_DIR to a folder with the four .gz files, or let 'run --download' fetch them" >&2
