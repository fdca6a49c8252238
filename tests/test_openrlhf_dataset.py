"""Our prepared files through OpenRLHF's real SFT dataset: the tokens under its loss mask must be
exactly our prefix ids + end-of-turn (prefix rows) and the whole response + end-of-turn (full rows)."""

from __future__ import annotations

import math
import time
from types import SimpleNamespace

import pytest

from test_prefix import RESPONSES, fake_sample
from upft.builders import build_upft
from upft.models import end_of_turn_id

openrlhf_datasets = pytest.importorskip("openrlhf.datasets")


def openrlhf_dataset(tok, rows: list[dict]):
    """OpenRLHF's real SFT dataset of our rows, as its train_sft builds it from our train.jsonl."""
    from datasets import Dataset

    data = SimpleNamespace(input_key="prompt", output_key="response", apply_chat_template=True,
                           tokenizer_chat_template=None)
    return openrlhf_datasets.SFTDataset(Dataset.from_list([{"prompt": r["prompt"], "response": r["response"]}
                                                           for r in rows]),
                                        tok, 512, SimpleNamespace(args=SimpleNamespace(data=data)),
                                        input_template=None, num_processors=1)


def upft_rows(tok) -> list[dict]:
    """A small UPFT set: one full row, then prefix rows of 4 tokens."""
    samples = [fake_sample(tok, i, t, "full" if i == 0 else "prefix") for i, t in enumerate(RESPONSES)]
    return build_upft(samples, tok, end_of_turn_id(tok), 4)[0]


def openrlhf_trained(tok, rows: list[dict]) -> list[list[int]]:
    """The ids OpenRLHF's real SFT dataset puts under its loss for each of our rows."""
    ds = openrlhf_dataset(tok, rows)
    assert len(ds) == len(rows)
    out = []
    for i, r in enumerate(rows):
        input_ids, _, loss_mask = ds[i]
        ids, mask = input_ids[0].tolist(), loss_mask[0].tolist()
        assert ids[:len(r["prompt_ids"])] == r["prompt_ids"]
        # OpenRLHF trains log p(ids[t+1] | ids[:t+1]) where loss_mask[t] == 1 (it shifts by one)
        out.append([ids[t + 1] for t in range(len(ids) - 1) if mask[t]])
    return out


@pytest.mark.parametrize("L", [3, 8, 32])
def test_loss_tokens_are_exactly_ours(tok, L):
    eot = end_of_turn_id(tok)
    samples = [fake_sample(tok, i, t, "full" if i == 0 else "prefix") for i, t in enumerate(RESPONSES)]
    rows, dropped = build_upft(samples, tok, eot, L)
    assert dropped == 0
    for r, trained in zip(rows, openrlhf_trained(tok, rows)):
        assert trained == r["target_ids"], (r["kind"], tok.decode(trained), tok.decode(r["target_ids"]))
    kinds = [r["kind"] for r in rows]
    assert kinds == ["full", "prefix", "prefix"]
    assert rows[0]["target_ids"] == samples[0]["response_ids"] + [eot]


def test_an_eos_unlike_the_end_of_turn_is_not_trained_twice(model_path):
    """A tokenizer whose eos is not its end-of-turn token (as a Qwen2.5 base tokenizer's): OpenRLHF
    alone trains "<|im_end|> <|endoftext|>" at every row's end; with our guard, exactly our ids."""
    from upft.models import load_tokenizer
    from upft.openrlhf_sft import one_end_per_row

    tok = load_tokenizer(model_path)
    tok.eos_token = "<|endoftext|>"
    eot = end_of_turn_id(tok)
    samples = [fake_sample(tok, i, t, "full" if i == 0 else "prefix") for i, t in enumerate(RESPONSES)]
    rows, _ = build_upft(samples, tok, eot, 8)
    doubled = openrlhf_trained(tok, rows)
    assert all(t[:len(r["target_ids"])] == r["target_ids"] and tok.decode(t[len(r["target_ids"]):]) == " <|endoftext|>"
               for r, t in zip(rows, doubled))
    assert openrlhf_trained(one_end_per_row(tok), rows) == [r["target_ids"] for r in rows]
    assert tok.eos_token == "<|im_end|>"


@pytest.fixture
def openrlhf_sft(monkeypatch):
    """OpenRLHF's SFT trainer module with our guards installed; restored afterwards.

    openrlhf.models imports flash_attn, which has no CPU build: the test-only stand-in is used.
    """
    import torch

    from conftest import REPO

    monkeypatch.syspath_prepend(str(REPO / "tests" / "gpu" / "stubs"))
    sft_trainer = pytest.importorskip("openrlhf.trainer.sft_trainer")
    monkeypatch.setattr(sft_trainer, "SFTLoss", sft_trainer.SFTLoss)
    monkeypatch.setattr(sft_trainer.SFTTrainer, "save_logs_and_checkpoints",
                        sft_trainer.SFTTrainer.save_logs_and_checkpoints)
    monkeypatch.setattr(sft_trainer.SFTTrainer, "fit", sft_trainer.SFTTrainer.fit)
    from openrlhf.utils.deepspeed import deepspeed as ds

    for name in ("prepare", "save_model", "setup_dataloader"):
        monkeypatch.setattr(ds.DeepspeedStrategy, name, getattr(ds.DeepspeedStrategy, name))
    from deepspeed.ops.op_builder.builder import OpBuilder

    monkeypatch.setattr(OpBuilder, "load", OpBuilder.load)
    import openrlhf.models.actor

    for name in ("__init__", "forward"):
        monkeypatch.setattr(openrlhf.models.actor.Actor, name, getattr(openrlhf.models.actor.Actor, name))
    monkeypatch.setattr(sft_trainer, "iter_grad_accum_global_norm", sft_trainer.iter_grad_accum_global_norm)
    monkeypatch.setattr(openrlhf_datasets.SFTDataset, "__init__", openrlhf_datasets.SFTDataset.__init__)
    import openrlhf.utils

    monkeypatch.setattr(openrlhf.utils, "get_tokenizer", openrlhf.utils.get_tokenizer)
    cudnn = torch.backends.cuda.cudnn_sdp_enabled()
    yield sft_trainer
    torch.backends.cuda.enable_cudnn_sdp(cudnn)


@pytest.mark.parametrize("loss_avg", ["sample", "token"])
def test_openrlhf_loss_weighting_is_ours(tok, model_path, openrlhf_sft, loss_avg):
    """Our rows -> OpenRLHF's SFTDataset and collate -> the real model -> OpenRLHF's SFTLoss and its
    optimizer-step normalisers, as its trainer calls them (two micro-batches of one step, DeepSpeed's
    1/accumulation). 'sample' must give the mean of the rows' mean NLLs, 'token' the mean over tokens."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from openrlhf.models.utils import log_probs_from_logits
    from openrlhf.utils.loss_utils import _optimizer_step_loss_norm
    from upft.openrlhf_sft import install

    install(loss_avg)
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    rows = upft_rows(tok)
    ds = openrlhf_dataset(tok, rows)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    loss_fn = openrlhf_sft.SFTLoss()

    def step_loss(split: list[list[int]]) -> tuple[float, list]:
        micro_batches = [ds.collate_fn([ds[i] for i in rows_]) for rows_ in split]
        info = _optimizer_step_loss_norm([b[2].squeeze(1)[:, :-1] for b in micro_batches], None, 1, gas=2)
        total, nll_rows = 0.0, []
        with torch.no_grad():
            for ids, attn, mask in micro_batches:
                ids, attn, mask = ids.squeeze(1), attn.squeeze(1), mask.squeeze(1)
                logp = log_probs_from_logits(model(ids, attention_mask=attn).logits[:, :-1], ids[:, 1:])
                total += loss_fn(logp, mask[:, :-1], **info).item() / 2  # DeepSpeed scales by 1/accumulation
                nll_rows += [-logp[i][mask[i, :-1].bool()] for i in range(len(ids))]
        return total, nll_rows

    total, nll_rows = step_loss([[0, 1], [2]])
    per_row = sum(x.mean().item() for x in nll_rows) / len(nll_rows)
    per_token = sum(x.sum().item() for x in nll_rows) / sum(len(x) for x in nll_rows)
    assert [len(x) for x in nll_rows] == [len(r["target_ids"]) for r in rows]
    assert math.isclose(total, per_row if loss_avg == "sample" else per_token, rel_tol=1e-5)
    assert not math.isclose(per_row, per_token, rel_tol=1e-2)  # the two weightings really differ here
    # the same rows split otherwise (--upft.group_by_length: the short prefix rows together): the same step loss
    assert math.isclose(step_loss([[2, 1], [0]])[0], total, rel_tol=1e-5)


def test_openrlhf_stops_on_a_non_finite_step(openrlhf_sft):
    from upft.openrlhf_sft import install

    install("sample")
    with pytest.raises(SystemExit, match="error: training diverged at optimizer step 7 \\(grad_norm nan\\)"):
        openrlhf_sft.SFTTrainer.save_logs_and_checkpoints(None, None, 7, None, {"gpt_loss": 0.5, "grad_norm": float("nan")})


@pytest.mark.parametrize("trained_logits", [False, True])
def test_each_logged_step_carries_the_tokens_it_trained(openrlhf_sft, tok, monkeypatch, trained_logits):
    """install() counts each optimizer step's trained tokens where OpenRLHF's loop hands it the step's
    micro-batches (its real iter_grad_accum_global_norm, on our rows through its dataset and collate; also
    under --upft.trained_logits' wrapper of it) and logs the count beside the step's loss: the tokens under
    the step's loss masks, our rows' target ids. The micro-batches go on to the loop unchanged. Where
    OpenRLHF logs every 2nd step, a logged step carries the tokens of both."""
    from upft.openrlhf_sft import STEP_TOKENS, install

    logged = []
    monkeypatch.setattr(openrlhf_sft.SFTTrainer, "save_logs_and_checkpoints",
                        lambda self, args, step, bar, logs_dict=None, client_states=None: logged.append((step, logs_dict)))
    install("sample", trained_logits=trained_logits)
    rows = upft_rows(tok)
    ds = openrlhf_dataset(tok, rows)
    steps = [[ds.collate_fn([ds[0]]), ds.collate_fn([ds[1], ds[2]])], [ds.collate_fn([ds[2]]), ds.collate_fn([ds[1]])]]

    def train(every: int) -> None:  # the two steps as OpenRLHF's loop runs them, logging every EVERY steps
        args = SimpleNamespace(logger=SimpleNamespace(logging_steps=every))
        for n, window in enumerate(steps, 1):
            seen = [b for b, _ in openrlhf_sft.iter_grad_accum_global_norm(window, None, 2, lambda b: b[2].squeeze(1)[:, :-1])]
            assert len(seen) == 2 and all(a is b for a, b in zip(seen, window))
            openrlhf_sft.SFTTrainer.save_logs_and_checkpoints(None, args, n, None, {"gpt_loss": 0.5})

    tokens = [len(r["target_ids"]) for r in rows]
    train(1)
    assert logged == [(1, {"gpt_loss": 0.5, STEP_TOKENS: sum(tokens)}),
                      (2, {"gpt_loss": 0.5, STEP_TOKENS: tokens[1] + tokens[2]})]
    logged.clear()
    train(2)
    assert logged == [(1, {"gpt_loss": 0.5}), (2, {"gpt_loss": 0.5, STEP_TOKENS: sum(tokens) + tokens[1] + tokens[2]})]
    openrlhf_sft.SFTTrainer.save_logs_and_checkpoints(None, None, 3, None, {"gpt_loss": 0.5})  # no step counted
    assert logged[-1] == (3, {"gpt_loss": 0.5})


def test_openrlhf_loads_its_tokenizer_with_one_end_per_row(openrlhf_sft, model_path, monkeypatch):
    """install() reaches the tokenizer OpenRLHF's train_sft builds (through openrlhf.utils.get_tokenizer)."""
    import openrlhf.utils
    from transformers import AutoTokenizer

    from upft.openrlhf_sft import install

    plain = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained",
                        lambda *a, **k: setattr(t := plain(*a, **k), "eos_token", "<|endoftext|>") or t)
    install("sample")
    tok = openrlhf.utils.get_tokenizer(model_path, None)
    assert tok.eos_token == "<|im_end|>"


THINK_TEMPLATE = (  # DeepSeek-R1-Distill's habit: "<think>\n" in the generation prompt only
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")


def test_a_template_that_adds_think_to_the_generation_prompt_keeps_token_exact_rows(model_path):
    """The sampled answer continues "...assistant\\n<think>\\n"; a finished turn renders without it.
    Prefix and full rows must still train exactly the sampled ids after the sampling prompt, in
    both trainers (our ids; OpenRLHF's loss mask), and no row may be dropped."""
    from upft.models import load_tokenizer

    tok = load_tokenizer(model_path)
    tok.chat_template = THINK_TEMPLATE
    eot = end_of_turn_id(tok)
    texts = ["Let me see. 3 boxes * 4 = 12 apples.\n</think>\nThe answer is \\boxed{12}.", *RESPONSES[:2]]
    samples = [fake_sample(tok, i, t, "full" if i == 0 else "prefix") for i, t in enumerate(texts)]
    assert all(s["prompt"].endswith("<|im_start|>assistant\n<think>\n") for s in samples)
    rows, dropped = build_upft(samples, tok, eot, 6)
    assert dropped == 0 and [r["kind"] for r in rows] == ["full", "prefix", "prefix"]
    assert rows[0]["target_ids"] == samples[0]["response_ids"] + [eot]
    assert all(r["target_ids"] == s["response_ids"][:6] + [eot] for r, s in zip(rows[1:], samples[1:]))
    assert openrlhf_trained(tok, rows) == [r["target_ids"] for r in rows]


def test_group_by_length_sorts_each_ranks_rows_of_a_step_and_nothing_else(openrlhf_sft, tmp_path, monkeypatch):
    """--upft.group_by_length through OpenRLHF's own setup_dataloader and DistributedSampler: per
    rank, each optimizer step's rows (micro-batch x accumulation) are the ones OpenRLHF would draw,
    sorted by length; OpenRLHF's sampler is left as it was for everything else."""
    import torch.distributed as dist
    from openrlhf.utils.deepspeed import deepspeed as ds

    from upft.openrlhf_sft import install

    plain = ds.DistributedSampler
    lengths = [5, 300, 7, 9, 250, 6, 8, 400, 5, 12, 280, 6, 7, 9, 10, 11]
    dataset = type("Rows", (), {"__len__": lambda self: len(lengths), "__getitem__": lambda self, i: i,
                                "prompts": ["p"] * len(lengths),
                                "responses": ["r" * (n - 1) for n in lengths]})()
    install("sample", group_by_length=True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        strategy = SimpleNamespace(ds_device_mesh={"dp": SimpleNamespace(get_group=lambda: dist.group.WORLD)},
                                   seed=3, accumulated_gradient=2)
        loader = ds.DeepspeedStrategy.setup_dataloader(strategy, dataset, 2, True, True, lambda b: b)
    finally:
        dist.destroy_process_group()
    assert ds.DistributedSampler is plain and loader.sampler.window == 4
    drawn = list(plain(dataset, num_replicas=1, rank=0, shuffle=True, seed=3))
    grouped = [i for batch in loader for i in batch]
    for step in range(0, len(lengths), 4):
        assert sorted(grouped[step:step + 4]) == sorted(drawn[step:step + 4])
        assert [lengths[i] for i in grouped[step:step + 4]] == sorted(lengths[i] for i in drawn[step:step + 4])
    assert grouped != drawn


def test_openrlhf_phases_are_marked_around_its_own_methods(openrlhf_sft, capsys, monkeypatch):
    """install() wraps OpenRLHF's DeepSpeed set-up, training loop and save with phase lines (rank 0
    only, an end line even when the call fails), which the launcher's timing() reads."""
    from openrlhf.utils.deepspeed import deepspeed as ds

    from upft.openrlhf_sft import PHASE, install

    plain = ds.DeepspeedStrategy.prepare, ds.DeepspeedStrategy.save_model, openrlhf_sft.SFTTrainer.fit
    install("sample")
    wrapped = ds.DeepspeedStrategy.prepare, ds.DeepspeedStrategy.save_model, openrlhf_sft.SFTTrainer.fit
    assert [w.__wrapped__ for w in wrapped] == list(plain)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(AttributeError):
        ds.DeepspeedStrategy.prepare(SimpleNamespace(), "no model")
    lines = capsys.readouterr().out.splitlines()
    assert [x.rsplit(" ", 1)[0] for x in lines] == [f"{PHASE} prepare_start", f"{PHASE} prepare_end"]
    assert float(lines[0].rsplit(" ", 1)[1]) <= float(lines[1].rsplit(" ", 1)[1])
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(AttributeError):
        ds.DeepspeedStrategy.prepare(SimpleNamespace(), "no model")
    assert capsys.readouterr().out == ""


def test_deepspeed_op_loads_are_timed(openrlhf_sft, capsys, monkeypatch):
    """install() makes DeepSpeed's own op loader print each load's time (rank 0 only) in the line
    the launcher's timing() sums into op_load_s; a load that fails prints it too. The build itself
    (a C++/CUDA compile) is stood in for by jit_load."""
    from deepspeed.ops.op_builder.builder import OpBuilder

    from upft.openrlhf_launcher import timing
    from upft.openrlhf_sft import install

    class Slow(OpBuilder):  # DeepSpeed's load() dispatches to jit_load for an op not installed
        NAME = "upft_slow"

        def __init__(self, fail: bool = False):
            super().__init__(name=self.NAME)
            self.fail = fail

        def absolute_name(self):
            return f"upft.{self.NAME}"

        def sources(self):
            return []

        def jit_load(self, verbose=True):
            time.sleep(0.2)
            if self.fail:
                raise RuntimeError("no compiler")
            return "op module"

    install("sample")
    monkeypatch.setenv("RANK", "0")
    assert Slow().load() == "op module"
    with pytest.raises(RuntimeError, match="no compiler"):
        Slow(fail=True).load()
    out = capsys.readouterr().out
    assert [x.rsplit(":", 1)[0] for x in out.splitlines()] == ["Time to load upft_slow op"] * 2
    assert 0.4 <= timing([], 0.0, 0.0, 0.0, out)["op_load_s"] < 2
    monkeypatch.setenv("RANK", "1")
    Slow().load()
    assert capsys.readouterr().out == ""


def test_a_profile_of_training_micro_steps(openrlhf_sft, capsys, monkeypatch):
    """install(profile_steps=N) runs OpenRLHF's training loop under torch.profiler: after the first
    PROFILE_SKIP + 1 micro-steps (each ending at the strategy's optimizer_step), N are recorded and rank
    0 prints their wall time and op table; a run too short says so. The loop and the strategy are
    stand-ins for OpenRLHF's (which need a model under DeepSpeed): each micro-step is one matmul."""
    import torch
    from openrlhf.utils.deepspeed import deepspeed as ds

    from upft.openrlhf_sft import PROFILE_SKIP, install, profiled

    plain = openrlhf_sft.SFTTrainer.fit
    install("sample", profile_steps=3)
    assert openrlhf_sft.SFTTrainer.fit.__wrapped__.__wrapped__ is plain  # timed(profiled(fit))

    class Strategy:
        def optimizer_step(self, x):
            return (x @ x).sum()

    def fit(self, strategy, n):
        x = torch.randn(32, 32)
        return [strategy.optimizer_step(x) for _ in range(n)]

    monkeypatch.setenv("RANK", "0")
    loop = profiled(fit, Strategy, 3)
    assert len(loop(None, Strategy(), 12)) == 12 and Strategy.optimizer_step.__name__ == "optimizer_step"
    out = capsys.readouterr().out
    assert "[upft] profile: 3 micro-steps in " in out and "aten::mm" in out and "the run ended" not in out
    assert "[upft] profile by input shape:" in out and "[[32, 32], [32, 32]]" in out  # the matmul's inputs
    assert len(loop(None, Strategy(), PROFILE_SKIP + 2)) == PROFILE_SKIP + 2  # one profiled micro-step of 3
    assert "the run ended 1 micro-steps into the 3 asked for" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "1")
    loop(None, Strategy(), 12)
    assert capsys.readouterr().out == ""
    assert ds.DeepspeedStrategy.optimizer_step.__name__ == "optimizer_step"  # OpenRLHF's own, untouched here


def test_openrlhf_tokenizes_with_the_processes_asked_for(openrlhf_sft, tok, monkeypatch):
    """install(data_procs=N) reaches the num_proc of OpenRLHF's own SFTDataset map (hard-wired to 8
    there); a caller's explicit num_processors still wins."""
    from datasets import Dataset

    from upft.openrlhf_sft import install

    seen, plain = [], Dataset.map
    def map_(self, *args, **kwargs):  # the real map; filter() calls it too, with num_proc None
        if kwargs.get("num_proc") is not None:
            seen.append(kwargs["num_proc"])
        return plain(self, *args, **kwargs)

    monkeypatch.setattr(Dataset, "map", map_)
    install("sample", data_procs=1)
    rows = Dataset.from_list([{"prompt": [{"role": "user", "content": "q"}],
                               "response": [{"role": "assistant", "content": "a"}]}])
    strategy = SimpleNamespace(args=SimpleNamespace(data=SimpleNamespace(
        input_key="prompt", output_key="response", apply_chat_template=True, tokenizer_chat_template=None)))
    assert len(openrlhf_datasets.SFTDataset(rows, tok, 64, strategy)) == 1
    openrlhf_datasets.SFTDataset(rows, tok, 64, strategy, num_processors=2)
    assert seen == [1, 2]


def test_causal_attention_drops_only_a_right_padding_mask_and_changes_no_trained_output(openrlhf_sft, tok, model_path,
                                                                                        monkeypatch):
    """install(causal_attention=True): OpenRLHF's real Actor around the real model gives the same log
    probabilities at every real position of a right-padded batch (as OpenRLHF's SFT collate pads),
    while SDPA gets no mask and is_causal; a left-padded batch keeps its mask."""
    import torch
    import torch.nn.functional as F

    from openrlhf.utils.utils import zero_pad_sequences
    from openrlhf.models.actor import Actor
    from upft.openrlhf_sft import install

    rows = [tok(t, return_tensors="pt")["input_ids"] for t in ("One two three four five six.", "Seven", "Eight nine ten")]
    masks: list = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        masks.append((kwargs.get("attn_mask"), kwargs.get("is_causal")))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)

    def logprobs(actor, side: str) -> list[torch.Tensor]:
        ids = zero_pad_sequences(rows, side, tok.pad_token_id)
        mask = zero_pad_sequences([torch.ones_like(r) for r in rows], side)
        masks.clear()
        with torch.no_grad():
            out = actor(ids, attention_mask=mask, return_logprobs=True)
        real = mask[:, 1:].bool()  # the positions that predict a real next token
        return [out[i][real[i]] for i in range(len(rows))]

    def actor() -> Actor:  # as OpenRLHF's train_sft builds it (in bf16), then float32 to compare closely
        return Actor(model_path, attn_implementation="sdpa").float().eval()

    plain = {side: logprobs(actor(), side) for side in ("right", "left")}
    assert all(m is not None for m, _ in masks)  # OpenRLHF alone always passes a padding mask
    install("sample", causal_attention=True)
    causal = actor()
    right = logprobs(causal, "right")
    assert masks and all(m is None and c for m, c in masks)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain["right"], right))
    left = logprobs(causal, "left")
    assert all(m is not None for m, _ in masks)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain["left"], left))


@pytest.mark.parametrize("causal, temperature", [(False, 1.0), (True, 1.0), (False, 0.7)])
def test_trained_logits_give_openrlhfs_loss_and_gradients_from_the_trained_positions_alone(openrlhf_sft, tok,
                                                                                             model_path, causal,
                                                                                             temperature, monkeypatch):
    """install(trained_logits=True): the training loop's micro-batches (through OpenRLHF's own
    iter_grad_accum_global_norm and SFTLoss, as its trainer calls them, the model inside a DeepSpeed
    engine) give the same loss and gradients as OpenRLHF's actor, while the model still runs through
    the engine once per micro-batch and its output layer sees only the trained positions; any other
    call (an evaluation's) is OpenRLHF's own. A UPFT set: full rows and short prefix rows; with causal
    attention, SDPA gets no mask; with a temperature, both divide the logits by it."""
    import torch
    import torch.nn.functional as F

    from openrlhf.models import SFTLoss
    from openrlhf.models.actor import Actor
    from upft.openrlhf_sft import install

    class Engine(torch.nn.Module):
        """A stand-in for DeepSpeed's engine, which OpenRLHF's strategy.prepare puts in ``Actor.model``:
        a plain module around the model (``.module``) that hands unknown attributes to it, whose
        forward (where DeepSpeed hooks its backward prologue) is counted."""

        def __init__(self, module):
            super().__init__()
            self.module, self.calls, self.config = module, 0, {}  # DeepSpeed's config is a dict

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self.module(*args, **kwargs)

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(super().__getattr__("module"), name)

    ds = openrlhf_dataset(tok, upft_rows(tok))
    window = [ds.collate_fn([ds[0], ds[1]]), ds.collate_fn([ds[2]])]  # one optimizer step, two micro-batches
    trained = sum(int(b[2][..., :-1].sum()) for b in window)
    masks: list = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        masks.append(kwargs.get("attn_mask"))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)

    def step(actor: Actor) -> tuple[float, dict, list[int]]:
        seen: list[int] = []  # the rows the output layer computes logits for, per call
        hook = actor.model.get_output_embeddings().register_forward_hook(
            lambda m, args, out: seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0]))
        actor.zero_grad()
        loss_fn, total = SFTLoss(token_level_loss=False), 0.0  # install()'s, before and after it
        loop = openrlhf_sft.iter_grad_accum_global_norm(window, None, 2, lambda b: b[2].squeeze(1)[:, :-1])
        for (ids, attn, mask), info in loop:  # the trainer's call, as in sft_trainer.fit
            logp, _ = actor(ids.squeeze(1), attention_mask=attn.squeeze(1), return_output=True, return_logprobs=True,
                            ring_attn_group=None)
            loss = loss_fn(logp, mask.squeeze(1)[:, :-1], **info) / 2  # DeepSpeed's 1/accumulation
            loss.backward()
            total += loss.item()
        hook.remove()
        return total, {n: p.grad.clone() for n, p in actor.named_parameters() if p.grad is not None}, seen

    def actor() -> Actor:  # as OpenRLHF's train_sft builds it (bf16), float32 to compare; then in its engine
        built = Actor(model_path, attn_implementation="sdpa", temperature=temperature).float()
        built.model = Engine(built.model)
        return built

    plain_loss, plain_grads, plain_seen = step(actor())
    install("sample", trained_logits=True, causal_attention=causal)
    ours = actor()
    masks.clear()
    loss, grads, seen = step(ours)
    assert ours.model.calls == len(window)  # through the engine, once a micro-batch
    assert all(m is None for m in masks) if causal else any(m is not None for m in masks)  # the padded batch's
    assert math.isclose(loss, plain_loss, rel_tol=1e-5)
    assert grads.keys() == plain_grads.keys()
    # both take a float32 log-softmax over the vocabulary, summed in different orders: about 1e-5 apart
    # per token on this CPU, and each parameter's gradient within 2e-4 of OpenRLHF's (relative to its norm;
    # in float64 weights too, so not the weights' rounding). A wrong shift or mask is off by far more.
    assert max(((grads[n] - plain_grads[n]).norm() / plain_grads[n].norm()).item() for n in grads) < 1e-3
    assert sum(seen) == trained < sum(plain_seen)  # OpenRLHF's: every position of every row
    ids, attn, _ = window[0]
    with torch.no_grad():  # outside the loop (an evaluation): OpenRLHF's own path
        logp = ours(ids.squeeze(1), attention_mask=attn.squeeze(1), return_logprobs=True)
    # every position's log-prob, not the trained ones' alone (a confident token's may round to 0)
    assert logp.shape == (2, ids.shape[-1] - 1) and int(logp.ne(0).sum()) > int(window[0][2][..., :-1].sum())
    ours.packing_samples = True
    with pytest.raises(SystemExit, match="error: --upft.trained_logits: it does not work with --ds.packing_samples"):
        step(ours)


def _training_call(actor, tok, **kwargs):
    """The log-probs of actor on the first micro-batch of a UPFT set, called as OpenRLHF's trainer calls
    it inside its training loop (sft_trainer.fit; kwargs: other keyword arguments), and that batch."""
    from openrlhf.trainer import sft_trainer

    ds = openrlhf_dataset(tok, upft_rows(tok))
    kwargs = {"return_output": True, "return_logprobs": True, "ring_attn_group": None, **kwargs}
    for (ids, attn, mask), _ in sft_trainer.iter_grad_accum_global_norm([ds.collate_fn([ds[0], ds[1]])], None, 1,
                                                                         lambda b: b[2].squeeze(1)[:, :-1]):
        logp, _ = actor(ids.squeeze(1), attention_mask=attn.squeeze(1), **kwargs)
        return logp, (ids.squeeze(1), attn.squeeze(1), mask.squeeze(1)[:, :-1].bool())


def test_trained_logits_of_a_bf16_model_are_openrlhfs_float32_log_probs(openrlhf_sft, tok, model_path):
    """install(trained_logits=True) on a bf16 model, as OpenRLHF's train_sft builds it: the trained
    positions' log-probs are OpenRLHF's own, from float32 logits as OpenRLHF casts them before its
    log-softmax, and every other position's are 0."""
    import torch

    from openrlhf.models.actor import Actor
    from upft.openrlhf_sft import install

    install("sample", trained_logits=True)
    actor = Actor(model_path, attn_implementation="sdpa").eval()
    assert next(actor.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        ours, (ids, attn, trained) = _training_call(actor, tok)
        theirs = actor(ids, attention_mask=attn, return_logprobs=True)  # outside the loop: OpenRLHF's path
    assert ours.dtype == theirs.dtype == torch.float32
    assert bool(ours[~trained].eq(0).all())
    assert (ours[trained] - theirs[trained]).abs().max().item() < 1e-4  # 1.4e-5 seen: the output layer's rows


@pytest.mark.parametrize("kwargs, is_vlm, error", [
    ({"ring_attn_group": object()}, False, "it does not work with ring attention"),
    ({"return_entropy": True}, False, "OpenRLHF's trainer called its model in a way this option does not know"),
    ({}, True, "it does not work with vision-language models")])
def test_trained_logits_stop_where_they_do_not_apply(openrlhf_sft, tok, model_path, kwargs, is_vlm, error):
    """A training call that --upft.trained_logits does not cover stops with one error line, before the
    model runs, rather than computing another loss than OpenRLHF's."""
    from openrlhf.models.actor import Actor
    from upft.openrlhf_sft import install

    install("sample", trained_logits=True)
    actor = Actor(model_path, attn_implementation="sdpa")
    actor.is_vlm = is_vlm
    ran = []
    actor.model.register_forward_pre_hook(lambda module, args: ran.append(1))
    with pytest.raises(SystemExit, match=f"^error: --upft.trained_logits: {error}$"):
        _training_call(actor, tok, **kwargs)
    assert not ran
