#!/usr/bin/env bash
# FID Inception parity against pytorch-fid. pytorch-fid builds its network from torchvision, which
# does not import beside the project's CPU torch, so the check runs in its own virtual environment
# (.venv-fid, several GB on the first run, reused afterwards) with a torch/torchvision pair that
# match, and runs tests/evaluation/test_inception_parity.py there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-fid/bin/python ]; then
    python3 -m venv .venv-fid
fi
. .venv-fid/bin/activate
pip install -q torch==2.14.1 torchvision==0.29.1
pip install -q pytorch-fid==0.3.0 pytest -e .
pytest -q -p no:cacheprovider tests/evaluation/test_inception_parity.py "$@"
