#!/usr/bin/env bash
# Quick start: set up the environment, then train LeNet-5 XNOR-Net on the real Fashion-MNIST
# with the YAML trainer (configs/fashion_mnist_lenet.yaml, 3 epochs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python -m xnortrain --config configs/fashion_mnist_lenet.yaml "$@"
