#!/usr/bin/env bash
# Quick start: set up the environment, then train LeNet-5 XNOR-Net on real Fashion-MNIST.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
python scripts/demo_binop.py "$@"
