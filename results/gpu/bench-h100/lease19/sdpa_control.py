"""The cold GSM8K eval with transformers' stock sdpa (grouped_decoding=False): lease 19's same-machine control."""
import runpy, sys
import upft.models as m
_load = m.load_model
def load_model(*a, **k):
    k["grouped_decoding"] = False
    print("[control] grouped_decoding=False", flush=True)
    return _load(*a, **k)
m.load_model = load_model
sys.argv = ["eval/run_eval.py"] + sys.argv[1:]
runpy.run_path("eval/run_eval.py", run_name="__main__")
