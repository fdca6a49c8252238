#!/usr/bin/env bash
# Every wheel a GPU node needs, for Python 3.12 / manylinux x86_64, into DIR, so a node without
# internet installs from it:
#   bash scripts/gpu/wheelhouse.sh DIR                 # on a machine with PyPI access (any OS/Python)
#   pip install --no-index --find-links DIR -r requirements-gpu.txt      # on the GPU node
#   pip install --no-index --find-links DIR --no-deps openrlhf==0.11.2
# DeepSpeed and pylatexenc have no wheel on PyPI: theirs are built here (pure Python; DS_BUILD_OPS=0:
# DeepSpeed's ops compile on the node on first use, which needs nvcc there). flash-attn is not
# included (no PyPI wheels; see README).
# The set is about 4 GB (torch and the CUDA libraries). A node that already has part of it (torch,
# CUDA, an image's packages) takes only the rest with --have FILE: the names it has, one per line
# (`pip freeze` output works; a * matches any part of a name), e.g. scripts/gpu/device-image.txt.
set -euo pipefail
usage="usage: wheelhouse.sh DIR [--have FILE]"
dir=${1:?$usage}; have=""
if [ $# -gt 1 ]; then
  [ "$2" = --have ] && [ -f "${3:-}" ] || { echo "error: $usage (FILE must exist)" >&2; exit 2; }
  have=$(realpath "$3")
fi
cd "$(dirname "$0")/../.."
mkdir -p "$dir"
PLATFORM=(--python-version 3.12 --implementation cp --only-binary=:all: --platform linux_x86_64
          --platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for glibc in $(seq 5 35); do PLATFORM+=(--platform "manylinux_2_${glibc}_x86_64"); done  # glibc <= 2.35
orlhf=$(grep -oE 'openrlhf==[0-9.]+' requirements-gpu.txt | head -1)
for name in deepspeed pylatexenc; do  # sdists only on PyPI
  version=$(grep -E "^$name==" requirements-gpu.txt | cut -d= -f3 | cut -d' ' -f1)
  if ! ls "$dir/$name-$version"-*.whl > /dev/null 2>&1; then
    echo "building $name $version (a pure-Python wheel)" >&2
    DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps "$name==$version" -w "$dir"
  fi
done
# the resolver sees the built wheels through --find-links; everything else comes from PyPI
if [ -z "$have" ]; then
  python3 -m pip download -q "${PLATFORM[@]}" --find-links "$dir" -d "$dir" -r requirements-gpu.txt
else  # resolve the whole set (metadata only), then download what the node lacks
  python3 -m pip install -q --dry-run --ignore-installed --target "$dir/.resolve" "${PLATFORM[@]}" \
    --find-links "$dir" --report "$dir/.report.json" -r requirements-gpu.txt
  mapfile -t need < <(python3 - "$dir/.report.json" "$have" <<'PY'
import fnmatch, json, re, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
have = [norm(re.split(r"[=<>!~ @;]", line.strip())[0]) for line in open(sys.argv[2])
        if line.strip() and not line.startswith("#")]
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if not any(fnmatch.fnmatch(norm(name), pattern) for pattern in have):
        print(f"{name}=={version}")
PY
  )
  rm -f "$dir/.report.json"
  python3 -m pip download -q "${PLATFORM[@]}" --no-deps --find-links "$dir" -d "$dir" "${need[@]}"
fi
python3 -m pip download -q "${PLATFORM[@]}" --no-deps -d "$dir" "$orlhf"
echo "$(ls "$dir" | wc -l) wheels in $dir ($(du -sh "$dir" | cut -f1))"
