# Sourced by scripts/demo.sh and scripts/test.sh: a local .venv with the pinned requirements
# and this package (editable). Needs python3 (3.11) and PyPI access on first use.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.upft-installed
if [ ! -f "$stamp" ] || ! cmp -s requirements.txt "$stamp"; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements.txt
  python -m pip install -q --no-deps -e .
  cp requirements.txt "$stamp"
fi
