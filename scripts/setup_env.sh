# Sourced by scripts/demo.sh and scripts/test.sh: a local .venv with the pinned requirements
# and this package (editable). Needs python3 (3.11) and PyPI access on first use.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.upft-installed
if [ ! -f "$stamp" ] || ! cat requirements.txt scripts/setup_env.sh | cmp -s - "$stamp"; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements.txt
  # OpenRLHF without its GPU stack (flash-attn, deepspeed, vllm): enough for its SFT dataset class,
  # which the tests feed our training files through.
  python -m pip install -q --no-deps openrlhf==0.11.2 pylatexenc==2.10
  python -m pip install -q --no-deps -e .
  cat requirements.txt scripts/setup_env.sh > "$stamp"
fi
