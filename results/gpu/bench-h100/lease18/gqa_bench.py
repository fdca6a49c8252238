"""Decode-step time of a model of Qwen2.5-1.5B's shape (random weights: a step's cost does not depend on
them) with transformers' sdpa attention and with upft.attention's grouped decoding steps; run from the
repository root: PYTHONPATH=$PWD python3 results/gpu/bench-h100/lease18/gqa_bench.py ROWS WIDTH STEPS"""
import time, torch, sys
import upft.attention as A
from transformers import Qwen2Config, AutoModelForCausalLM, GenerationConfig
cfg = Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True)
torch.manual_seed(0)
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
rows, width, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
lens = torch.randint(width // 2, width + 1, (rows,))
ids = torch.randint(100, 150000, (rows, width), device="cuda")
mask = (torch.arange(width)[None, :] >= (width - lens)[:, None]).long().cuda()
for impl in ("sdpa", A.GROUPED_SDPA, "sdpa", A.GROUPED_SDPA):
    model.set_attn_implementation(impl)
    stamps = []
    class Clock:
        def __call__(self, input_ids, scores):
            torch.cuda.synchronize(); stamps.append(time.perf_counter()); return scores
    from transformers import LogitsProcessorList
    gc = GenerationConfig(max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.inference_mode():
        t = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gc, logits_processor=LogitsProcessorList([Clock()]))
    step = (stamps[-1] - stamps[1]) / (len(stamps) - 2) * 1000
    print(f"{impl:20s} rows {rows} width {width}: prefill+first {stamps[0]-t:.2f} s, step {step:.1f} ms, total {time.perf_counter()-t:.1f} s", flush=True)
    if impl == "sdpa": ref = out
    else: print("  same tokens as sdpa:", torch.equal(ref, out), (ref != out).float().mean().item())
