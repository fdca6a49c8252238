# Sourced by scripts/demo.sh and scripts/test.sh: a local .venv with the pinned requirements
# and this package (editable). Needs python3 (3.11) and PyPI access on first use.
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.upft-installed
if [ ! -f "$stamp" ] || ! cat requirements.txt scripts/setup_env.sh pyproject.toml | cmp -s - "$stamp"; then
  python -m pip install -q --upgrade pip
  python -m pip install -q -r requirements.txt
  # OpenRLHF without its GPU stack (flash-attn, deepspeed, vllm): enough for its SFT dataset class,
  # which the tests feed our training files through, and its data loader set-up.
  python -m pip install -q --no-deps openrlhf==0.11.2 pylatexenc==2.10 torchdata==0.11.0
  # vLLM without its GPU stack (it pins torch 2.11): enough for the tests to build real SamplingParams
  # and token prompts; generation with vLLM needs a GPU node (requirements-gpu.txt).
  python -m pip install -q --no-deps vllm==0.24.0 msgspec==0.22.0 cbor2==6.3.0 pyzmq==27.3.0 \
    aiohttp==3.14.5 multidict==7.2.1 attrs==26.1.0 yarl==1.25.1 propcache==0.5.4 aiohappyeyeballs==2.7.1 \
    aiosignal==1.4.0 frozenlist==1.8.0 openai-harmony==0.0.8 openai==3.57.0 httpx2==2.16.2 sniffio==1.3.1 \
    cloudpickle==3.1.3 pybase64==1.5.1 cachetools==8.0.2 uvloop==0.23.0 py-cpuinfo==9.0.0 prometheus_client==0.26.0
  # DeepSpeed without its compiled ops: importing OpenRLHF's SFT loss and trainer modules needs it,
  # and the tests run that loss on our rows (tests/test_openrlhf_dataset.py).
  DS_BUILD_OPS=0 python -m pip install -q --no-deps deepspeed==0.19.6 hjson==3.1.0 msgpack==1.2.4 \
    nvidia-ml-py==13.615.71 ninja==1.13.2 einops==0.8.2
  python -m pip install -q --no-deps -e .
  cat requirements.txt scripts/setup_env.sh pyproject.toml > "$stamp"
fi
