"""What compiling transformers' decoding step costs, and what it buys, by compile mode: the wall
time of one greedy ``generate`` of 256 forced new tokens over left-padded rows, with the first steps'
times (the compile lands in the second: the first is the prompt's) and the median step after them.

The transformers backend compiles long decodes (``upft.generation.generation_config``: a static KV
cache, transformers' inductor compile with CUDA graphs), once per batch shape. Whether that repays
depends on the compile's cost against the eager step's (a Python- and launch-bound step of ~67 ms
at 200 rows on an H100, lease 19). Modes, each in a fresh process:
  inductor       transformers' own compile (inductor, reduce-overhead), as the backend runs it
  inductor-warm  the same again, in the inductor cache the inductor run filled (a second run of a shape)
  cudagraphs     dynamo's cudagraphs backend: CUDA graphs of the traced step, no code generation
  regional-cg    each decoder layer compiled alone with CUDA graphs (one graph, reused by 28 layers)
  eager          no compile, the dynamic cache (the backend's short decodes)
The model is Qwen2.5-1.5B's shape (Qwen2.5-Coder-1.5B-Instruct's) with random weights and the
backend's grouped attention (``upft.attention``), so it needs no weights on the machine:

  python scripts/gpu/compile_probe.py --out compile_probe.jsonl [--modes inductor eager] [--rows 200]

Each mode gets an empty inductor cache of its own (``-warm``: its mode's), or ``--cache DIR`` for
all of them (a second call with other ``--rows`` then shows what a new batch shape costs). On a CPU
(``--device cpu``: two layers, 4 rows) it checks only that the script runs; transformers compiles
nothing there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

MODES = ("inductor", "inductor-warm", "cudagraphs", "regional-cg", "eager")


def probe(mode: str, rows: int, device: str) -> dict:
    """One ``generate`` in this process, compiled as ``mode`` says (without ``-warm``)."""
    import torch
    from decode_steps import Clock  # beside this script
    from transformers import CompileConfig, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from upft.attention import GROUPED_SDPA

    gpu = device == "cuda"
    cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28 if gpu else 2,
                      num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                      tie_word_embeddings=True)
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(cfg, attn_implementation=GROUPED_SDPA, dtype=torch.bfloat16).eval()
    g = torch.Generator().manual_seed(0)
    width, new = (200, 256) if gpu else (20, 70)
    lens = torch.randint(width // 2, width + 1, (rows,), generator=g)
    mask = (torch.arange(width)[None] >= (width - lens)[:, None]).long()
    ids = torch.randint(1000, 100000, (rows, width), generator=g) * mask

    kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=151645, pad_token_id=0)
    if mode == "eager":
        config = GenerationConfig(**kw, disable_compile=True)
    elif mode == "regional-cg":
        for layer in model.model.layers:
            layer.compile(mode="reduce-overhead")
        config = GenerationConfig(**kw, cache_implementation="static", disable_compile=True)
    else:
        backend, cmode = {"inductor": ("inductor", "reduce-overhead"), "cudagraphs": ("cudagraphs", "default")}[mode]
        config = GenerationConfig(**kw, cache_implementation="static", disable_compile=False,
                                  compile_config=CompileConfig(backend=backend, mode=cmode))
    clock = Clock(sync=gpu)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                             logits_processor=[clock])
    if gpu:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    gaps = sorted(b - a for a, b in zip(clock.stamps[64:], clock.stamps[65:]))
    return {"rows": rows, "wall_s": round(wall, 2), "steps": len(clock.stamps),
            "first3_s": [round(s - t0, 2) for s in clock.stamps[:3]],
            "step_ms_median": round(1000 * gaps[len(gaps) // 2], 2), "new_tokens": out.shape[1] - width,
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if gpu else "cpu"}


def run(mode: str, args: argparse.Namespace, cache: str) -> bool:
    """``mode`` in a child process with inductor cache ``cache``; its result appended to ``args.out``.
    Whether it ran to the end."""
    cmd = [sys.executable, __file__, "--child", mode, "--rows", str(args.rows), "--device", args.device]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}, capture_output=True,
                              text=True, timeout=args.timeout)
        line = next((w for w in done.stdout.splitlines() if w.startswith("RESULT ")), None)
        result = json.loads(line[7:]) if line and done.returncode == 0 else \
            {"rc": done.returncode, "stderr": done.stderr[-1500:]}
    except subprocess.TimeoutExpired:
        result = {"timeout_s": args.timeout}
    result = {"mode": mode, **result, "process_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")
    return "steps" in result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="JSONL file each mode's result is appended to")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--rows", type=int, default=200, help="rows of the batch (the UPFT pass's 200 full draws)")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--cache", help="one inductor cache for every mode (default: an empty one per mode)")
    ap.add_argument("--timeout", type=int, default=120, help="seconds a mode may take")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not (args.out or args.child):
        ap.error("--out is required")
    if args.child:
        print("RESULT " + json.dumps(probe(args.child.removesuffix("-warm"), args.rows, args.device)), flush=True)
        return
    failed = []
    with tempfile.TemporaryDirectory(prefix="compile-probe-") as tmp:  # the modes' own caches, removed after
        for mode in args.modes:  # -warm: its mode's cache, which that mode's run filled
            if not run(mode, args, args.cache or os.path.join(tmp, mode.removesuffix("-warm"))):
                failed.append(mode)
    if failed:  # the others' lines stand; a mode's failure is a finding too, but not a clean run
        sys.exit(f"error: {len(failed)} of {len(args.modes)} modes failed ({', '.join(failed)}; see {args.out})")


if __name__ == "__main__":
    main()
