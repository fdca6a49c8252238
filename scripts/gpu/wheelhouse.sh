#!/usr/bin/env bash
# Every wheel a GPU node needs, for Python 3.12 / manylinux x86_64, into DIR, so a node without
# internet installs from it:
#   bash scripts/gpu/wheelhouse.sh DIR                 # on a machine with PyPI access (any OS/Python)
#   pip install --no-index --find-links DIR -r requirements-gpu.txt      # on the GPU node
#   pip install --no-index --find-links DIR --no-deps openrlhf==0.11.2
# DeepSpeed has no wheel on PyPI: its wheel is built here (DS_BUILD_OPS=0: its ops compile on the
# node on first use, which needs nvcc there). flash-attn is not included (no PyPI wheels; see README).
# The set is about 4 GB (torch and the CUDA libraries).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:?usage: wheelhouse.sh DIR}
mkdir -p "$dir"
PLATFORM=(--python-version 3.12 --implementation cp --only-binary=:all:
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64
          --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform linux_x86_64)
ds=$(grep -E '^deepspeed==' requirements-gpu.txt | cut -d= -f3)
orlhf=$(grep -oE 'openrlhf==[0-9.]+' requirements-gpu.txt | head -1)
if ! ls "$dir"/deepspeed-"$ds"-*.whl > /dev/null 2>&1; then
  echo "building deepspeed $ds (a pure-Python wheel; its ops are built on the node)" >&2
  DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps "deepspeed==$ds" -w "$dir"
fi
# the resolver sees the DeepSpeed wheel through --find-links; everything else comes from PyPI
python3 -m pip download -q "${PLATFORM[@]}" --find-links "$dir" -d "$dir" -r requirements-gpu.txt
python3 -m pip download -q "${PLATFORM[@]}" --no-deps -d "$dir" "$orlhf"
echo "$(ls "$dir" | wc -l) wheels in $dir ($(du -sh "$dir" | cut -f1))"
