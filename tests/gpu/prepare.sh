#!/usr/bin/env bash
# Fill tests/gpu/wheelhouse/ with what the GPU machine needs and cannot download (it has no
# network): cp312 manylinux x86_64 wheels of the packages in tests/gpu/wheels.txt, at the
# versions envs/constraints.txt pins, and mmcv 2.1.0's source sdist (built there with CUDA ops).
# Run here, where PyPI is reachable, after scripts/setup.sh (it uses .venv's pip, whose
# setuptools < 81 still has the pkg_resources that mmcv's setup.py imports).
#
#   bash tests/gpu/prepare.sh
#
# Then carry the folder: run's carry ["tests/gpu/wheelhouse"] (it is gitignored, so it does
# not travel with the working tree otherwise).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

WHEELHOUSE=tests/gpu/wheelhouse
MMCV_SPEC="mmcv==2.1.0"
LIMIT_MIB=55 # what travels is at most 64 MiB: the repo's files (about 9 MiB) and this folder
PIP=(.venv/bin/python -m pip --disable-pip-version-check)
[[ -x .venv/bin/python ]] || { echo "prepare: .venv missing: run scripts/setup.sh first" >&2; exit 1; }

# name==version for every package of wheels.txt, the version from envs/constraints.txt
wheels=()
build_here=() # no wheel on PyPI: built here (pure Python only)
while IFS= read -r line; do
    name="${line%%#*}"
    name="${name//[[:space:]]/}"
    [[ -z "$name" ]] && continue
    version="$(grep -i -m1 "^${name}==" envs/constraints.txt | cut -d= -f3 || true)"
    [[ -n "$version" ]] || { echo "prepare: $name is not pinned in envs/constraints.txt" >&2; exit 1; }
    if [[ "$line" == *"no wheel"* ]]; then build_here+=("$name==$version"); else wheels+=("$name==$version"); fi
done <tests/gpu/wheels.txt

platforms=()
for tag in manylinux1 manylinux2010 manylinux2014 manylinux_2_5 manylinux_2_12 manylinux_2_17 \
    manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35; do
    platforms+=(--platform "${tag}_x86_64")
done

tmp="$(mktemp -d "${WHEELHOUSE}.new.XXXXXX")" # filled, then swapped in: a failed download keeps the old one
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT

echo "prepare: ${#wheels[@]} cp312 wheels"
"${PIP[@]}" download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none "${platforms[@]}" -d "$tmp" "${wheels[@]}"

if ((${#build_here[@]})); then
    echo "prepare: no wheel on PyPI, built here: ${build_here[*]}"
    "${PIP[@]}" wheel --quiet --no-deps -w "$tmp" "${build_here[@]}"
    for whl in "$tmp"/*.whl; do
        case "$whl" in *-py3-none-any.whl | *-py2.py3-none-any.whl | *-cp*-*manylinux*x86_64.whl | *-abi3-*manylinux*x86_64.whl) ;;
        *) echo "prepare: $(basename "$whl") does not install on the GPU machine (not pure Python, not manylinux x86_64)" >&2; exit 1 ;;
        esac
    done
fi

echo "prepare: $MMCV_SPEC source (sdist)"
"${PIP[@]}" download --quiet --no-deps --no-binary :all: --no-build-isolation -d "$tmp" "$MMCV_SPEC"

rm -rf "$WHEELHOUSE"
mv "$tmp" "$WHEELHOUSE"
trap - EXIT

echo "prepare: $(find "$WHEELHOUSE" -type f | wc -l) files in $WHEELHOUSE; the largest:"
find "$WHEELHOUSE" -type f -printf '%s %f\n' | sort -rn | head -5 | awk '{printf "  %6.1f MiB  %s\n", $1 / 1048576, $2}'
wheels_bytes="$(du -sb "$WHEELHOUSE" | cut -f1)"
tree_bytes="$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)"
awk -v w="$wheels_bytes" -v t="$tree_bytes" -v limit="$LIMIT_MIB" 'BEGIN {
    printf "prepare: wheelhouse %.1f MiB; with the working tree (%.1f MiB) %.1f MiB travel (limit 64 MiB)\n",
        w / 1048576, t / 1048576, (w + t) / 1048576
    if (w / 1048576 > limit) { printf "prepare: the wheelhouse is over %d MiB\n", limit; exit 1 }
}'
