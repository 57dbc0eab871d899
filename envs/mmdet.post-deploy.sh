#!/usr/bin/env bash
# Runs inside the freshly created mmdet conda env: mmcv's compiled ops need torch at build time.
set -euo pipefail
MMCV_WITH_OPS=1 FORCE_CUDA="${FORCE_CUDA:-0}" pip install --no-build-isolation mmcv==2.1.0
pip install mmdet==3.3.0
python -c "import mmcv.ops, mmdet; print('mmcv', mmcv.__version__, 'mmdet', mmdet.__version__)"
