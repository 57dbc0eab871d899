#!/usr/bin/env bash
# Set up detfold on a fresh machine: .venv with pinned torch (CPU), mmcv 2.1.0 built from
# source with its compiled ops, mmdet 3.3.0, snakemake and the test tools, plus the `detfold`
# command. Safe to re-run: when everything is in place it does nothing.
#
#   bash scripts/setup.sh            # CPU (this is what CI and the demo use)
#   TORCH_SPEC="torch==2.13.0" PIP_EXTRA_INDEX_URL=<your CUDA wheel index> FORCE_CUDA=1 bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3.11}"
VENV=.venv
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
MMCV_SPEC="mmcv==2.1.0"
STAMP="$VENV/.detfold-setup"
want="$(cat scripts/setup.sh envs/requirements.txt envs/constraints.txt pyproject.toml | sha256sum | cut -d' ' -f1) $TORCH_SPEC"

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]] \
    && "$VENV/bin/python" -c "import mmcv.ops, mmdet, detfold" 2>/dev/null; then
    echo "set-up: .venv is up to date"
    exit 0
fi

command -v "$PYTHON" >/dev/null || { echo "set-up: $PYTHON not found (Python 3.11 is needed: torch 2.13 wheels)" >&2; exit 1; }
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -c envs/constraints.txt)

echo "set-up: [1/4] torch ($TORCH_SPEC) and build tools"
"${pip[@]}" "$TORCH_SPEC" "setuptools<81" wheel numpy

echo "set-up: [2/4] $MMCV_SPEC with compiled ops (first build: about 15 min on 2 cores; pip caches the wheel)"
if ! "$VENV/bin/python" -c "import mmcv.ops" 2>/dev/null; then
    MMCV_WITH_OPS=1 FORCE_CUDA="${FORCE_CUDA:-0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
        "${pip[@]}" --no-build-isolation "$MMCV_SPEC"
fi

echo "set-up: [3/4] mmdet, snakemake, evaluation and test tools"
"${pip[@]}" -r envs/requirements.txt

echo "set-up: [4/4] the detfold library and command"
"${pip[@]}" --no-build-isolation --no-deps -e .

"$VENV/bin/python" - <<'PY'
import mmcv, mmcv.ops, mmdet, mmengine, torch
print(f"set-up: torch {torch.__version__} (cuda: {torch.cuda.is_available()}), mmcv {mmcv.__version__} with ops, "
      f"mmengine {mmengine.__version__}, mmdet {mmdet.__version__}")
PY
echo "$want" > "$STAMP"
echo "set-up: done"
