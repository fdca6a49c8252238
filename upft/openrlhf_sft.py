"""OpenRLHF's SFT trainer (``openrlhf.cli.train_sft``), unchanged but for three guards.

``upft.openrlhf_launcher`` starts this module under DeepSpeed in place of ``openrlhf.cli.train_sft``;
it takes the same flags plus ``--upft.loss_avg sample|token`` and then runs OpenRLHF's own
module as ``__main__``. No OpenRLHF file is copied or edited (four guards, in fact):

1. The loss weighting. OpenRLHF 0.11.2 builds ``SFTLoss()`` with ``token_level_loss=True``
   and no flag: the loss is the sum of target-token NLLs over the optimizer step divided by the
   step's target-token count, so long full rows outweigh short prefix rows. With
   ``token_level_loss=False`` its ``aggregate_loss`` takes each row's mean NLL and divides the
   step's sum of those by the step's number of rows (``global_batch_size``, counted over all
   micro-batches and data-parallel ranks, DeepSpeed's 1/accumulation and rank averaging
   compensated): every row weighs the same, as in the authors' micro-batch-1 code. ``sample``
   (the default) selects that.
2. cuDNN attention off: its backward returns NaN gradients for padded micro-batches on H100/H200
   (pytorch#196678; see ``upft.local_trainer``).
3. A non-finite loss or gradient norm stops the run at that step with an ``error:`` line,
   before OpenRLHF logs it or saves anything.
4. One end per row. OpenRLHF's SFT dataset appends ``" " + eos_token`` to every row that does
   not already end with the tokenizer's eos; where eos differs from the token that ends an
   assistant turn (a Qwen2.5 base tokenizer: ``<|endoftext|>`` vs ``<|im_end|>``), every row
   would be trained to say ``<|im_end|> <|endoftext|>``, unlike the local trainer's rows.
   ``one_end_per_row`` makes OpenRLHF's tokenizer use the end-of-turn token as its eos (the
   saved tokenizer keeps that, which is what generation should stop on).

And one option, ``--upft.group_by_length``: OpenRLHF pads each micro-batch to its longest row, and
a UPFT set mixes short prefix rows with 10% full-length ones, so most micro-batches of random rows
are padded to a full row's length. With the option, each rank's rows of one optimizer step (micro-
batch x accumulation steps, drawn as OpenRLHF draws them) go into its micro-batches sorted by
length. The step's rows, and so its loss and gradient, are the same; only the padding shrinks
(and the order in which micro-batch gradients are summed changes). One epoch only: OpenRLHF lets a
step run across two epochs, where the windows sorted here would no longer be its steps.

``--upft.causal_attention`` drops the padding mask of right-padded micro-batches (OpenRLHF's SFT
batches are), which changes no trained position's output and lets SDPA use its flash kernel
(``causal_only``).

``--upft.trained_logits`` computes the training loss's log-probabilities at the trained positions
only: OpenRLHF's actor turns the logits of every position (151,936 a token for Qwen2.5; prompt and
padding included) into float32 and takes a log-softmax over all of them: the largest share of a
profiled step's non-matmul GPU time that the profile names (results/gpu/bench-h200/lease13), and
what ran micro-batches of 32 out of memory. The loss is the same (``trained_forward``); on one
H200 it trained 15% faster, and micro-batches of 32 fit (results/gpu/bench-h200/lease14).

``--upft.data_procs N`` sets how many processes OpenRLHF's SFTDataset tokenizes the set with
(its ``num_processors``, hard-wired to 8 there). Eight cost more than they save on a small set: 1920
rows took 20-31 s of a run's start on an H100 host (``results/gpu/bench/bench-lease7.log``), and
one process was several times faster than eight on a 2-core CPU.

``--upft.profile_steps N`` (pass it after ``--`` to ``scripts/train_sft.sh``) profiles N micro-steps
of the training loop with ``torch.profiler`` and prints where their time went (``profiled``).

Rank 0 also prints a timestamped ``[upft] phase NAME TIME`` line when the process starts and
around DeepSpeed's set-up (``prepare``: engine, optimizer, op loads), the training loop (``fit``)
and the save, so the launcher can say where a run's wall time went (``upft.openrlhf_launcher.timing``),
and a ``Time to load NAME op: S seconds`` line for each op DeepSpeed loads or builds (``timed_op_load``).
Each logged step also carries the tokens it trained on rank 0 (``counting_tokens``), from which the
launcher measures tokens/s in steady state.
"""

from __future__ import annotations

import functools
import os
import runpy
import sys
import time

from upft.health import check_finite
from upft.errors import UserError

LOSS_FLAG = "--upft.loss_avg"
SWITCHES = {"--upft.group_by_length": "group_by_length", "--upft.causal_attention": "causal_attention",
            "--upft.trained_logits": "trained_logits"}
COUNTS = {"--upft.data_procs": "data_procs", "--upft.profile_steps": "profile_steps"}


def split_args(argv: list[str]) -> tuple[dict, list[str]]:
    """Our flags (``--upft.loss_avg VALUE``, the switches, ``--upft.data_procs N`` and
    ``--upft.profile_steps N``) as ``install``'s keyword arguments, and the flags that go to OpenRLHF
    unchanged."""
    options: dict = {"loss_avg": "sample"}
    rest = []
    it = iter(argv)
    for arg in it:
        name, eq, value = arg.partition("=")
        if name == LOSS_FLAG or name in COUNTS:
            value = value if eq else next(it, "")
            if name == LOSS_FLAG:
                options["loss_avg"] = value
            elif not value.isdigit() or int(value) < 1:
                raise SystemExit(f"error: {name} must be a whole number >= 1, got '{value}'")
            else:
                options[COUNTS[name]] = int(value)
        elif arg in SWITCHES:
            options[SWITCHES[arg]] = True
        else:
            rest.append(arg)
    if options["loss_avg"] not in ("sample", "token"):
        raise SystemExit(f"error: {LOSS_FLAG} must be 'sample' or 'token', got '{options['loss_avg']}'")
    return options, rest


PHASE = "[upft] phase"


def rank0() -> bool:
    """Whether this process is rank 0, which alone prints the timing lines (every rank passes the
    same points)."""
    return os.environ.get("RANK", "0") == "0"


def mark(name: str) -> None:
    """One phase line in OpenRLHF's log (rank 0 only)."""
    if rank0():
        print(f"{PHASE} {name} {time.time():.3f}", flush=True)


def timed(fn, name: str):
    """``fn`` with ``NAME_start`` / ``NAME_end`` phase lines around each call."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        mark(f"{name}_start")
        try:
            return fn(*args, **kwargs)
        finally:
            mark(f"{name}_end")

    return wrapper


def timed_op_load(load):
    """DeepSpeed's op loader (``OpBuilder.load``), printing on rank 0 how long each load took, in the
    line DeepSpeed prints only when asked to be verbose: 0.19.6 loads quietly, so an Adam op built
    for 30 s in a run's first DeepSpeed set-up left no trace, and a second run could not show that
    it loaded the op instead of building it again."""

    @functools.wraps(load)
    def wrapper(self, verbose=False):
        t0 = time.time()
        try:
            return load(self, verbose)
        finally:
            if rank0():
                print(f"Time to load {self.name} op: {time.time() - t0:.3f} seconds", flush=True)

    return wrapper


PROFILE_SKIP = 4  # micro-steps left out before the profile: the first ones pay for warm-up and allocation


def profiled(fit, strategy_cls, steps: int):
    """``fit`` (the trainer's loop) under ``torch.profiler`` for ``steps`` micro-steps, after
    ``PROFILE_SKIP``; a micro-step ends at each ``strategy_cls.optimizer_step`` (OpenRLHF calls it
    after every micro-batch). Rank 0 then prints the window's wall time and the ops that took the
    most GPU time (CPU time without a GPU), then the same by input shape (which tensors: the logits'
    or a layer's); the tables' footer gives the GPU's and the CPU's totals.
    Where a training step's time goes when its tokens/s fall short (issue 14)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule

    gpu = torch.cuda.is_available()
    sort = "self_cuda_time_total" if gpu else "self_cpu_time_total"

    def now() -> float:
        if gpu:
            torch.cuda.synchronize()
        return time.time()

    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        window = {"start": None, "end": None, "steps": 0}

        def report(prof) -> None:
            if rank0() and window["end"] is not None:
                print(f"[upft] profile: {window['steps']} micro-steps in {window['end'] - window['start']:.3f} s\n"
                      + prof.key_averages().table(sort_by=sort, row_limit=25)
                      + "\n[upft] profile by input shape:\n"
                      + prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=25), flush=True)

        def ticking(step):
            @functools.wraps(step)
            def tick(*a, **k):
                out = step(*a, **k)
                if window["start"] is not None and window["steps"] < steps:
                    window["steps"] += 1
                    window["end"] = now()  # before prof.step(), which may stop the profiler and report
                prof.step()
                if prof.step_num == PROFILE_SKIP + 1:  # the recorded window starts now
                    window["start"] = now()
                return out
            return tick

        plain = strategy_cls.optimizer_step
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
        with profile(activities=activities, on_trace_ready=report, record_shapes=True,
                     schedule=schedule(skip_first=PROFILE_SKIP, wait=0, warmup=1, active=steps, repeat=1)) as prof:
            strategy_cls.optimizer_step = ticking(plain)
            try:
                result = fit(self, *args, **kwargs)
            finally:
                strategy_cls.optimizer_step = plain
        if window["steps"] < steps and rank0():
            print(f"[upft] profile: the run ended {window['steps']} micro-steps into the {steps} asked for "
                  f"(the first {PROFILE_SKIP + 1} are not profiled)", flush=True)
        return result

    return wrapper


def length_grouped(sampler_cls):
    """OpenRLHF's DistributedSampler, its indices sorted by row length within each window of
    ``window`` (one rank's rows of one optimizer step; the option above)."""

    class LengthGrouped(sampler_cls):
        def __init__(self, dataset, *args, window: int, **kwargs):
            super().__init__(dataset, *args, **kwargs)
            self.window = window
            self.lengths = [len(p) + len(r) for p, r in zip(dataset.prompts, dataset.responses)]  # characters

        def __iter__(self):
            indices = list(super().__iter__())
            for start in range(0, len(indices), self.window):
                yield from sorted(indices[start:start + self.window], key=self.lengths.__getitem__)

    return LengthGrouped


def causal_only(module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A forward pre-hook of the HF model: a right-padded batch goes in without its padding mask and
    position ids (the option ``--upft.causal_attention``). Every pad comes after its row's last real
    token, so under the causal mask no real position attends to a pad, and the real positions' ids
    are 0..n-1 with or without the mask: their outputs are the same, and the pads' are never trained.
    Without a padding mask SDPA may take its flash kernel, where a mask forces the slower
    memory-efficient one. A batch padded otherwise keeps its mask."""
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2 and bool((mask == mask.cumprod(-1)).all()):  # rows of 1s, then 0s
        kwargs = {**kwargs, "attention_mask": None, "position_ids": None}  # ids 0..T-1 (HF's default)
    return args, kwargs


TRAINING_CALL = {"attention_mask", "return_output", "return_logprobs", "ring_attn_group"}  # SFTTrainer.fit's kwargs


def trained_forward(forward, pending: list):
    """OpenRLHF's ``Actor.forward``, except in the training loop's call (``--upft.trained_logits``):
    there, with the micro-batch's loss mask that the loop is about to use (``pending``, filled by
    ``remembering_masks``), the model runs as OpenRLHF runs it (through DeepSpeed's engine and the
    model's own forward and hooks), but its output layer gets the final hidden states of the trained
    positions alone (a pre-hook held for that call only), and each one's log-probability of its next
    token comes from one float32 cross-entropy. Every other position gets 0, which the loss masks out as it
    masked out OpenRLHF's values there. The same loss as OpenRLHF's; the logits of prompt and
    padding positions are never made. A second model call per micro-batch (not OpenRLHF 0.11.2's)
    would take OpenRLHF's own path."""
    import torch
    import torch.nn.functional as F

    @functools.wraps(forward)
    def wrapper(self, sequences, *args, **kwargs):
        if not pending:  # an evaluation's call, or any other
            return forward(self, sequences, *args, **kwargs)
        loss_mask = pending.pop()
        problems = {"OpenRLHF's trainer called its model in a way this option does not know":
                    bool(args) or set(kwargs) != TRAINING_CALL,
                    "it does not work with ring attention": kwargs.get("ring_attn_group") is not None,
                    "it does not work with --ds.packing_samples": self.packing_samples,
                    "it does not work with vision-language models": getattr(self, "is_vlm", False)}
        for problem in (p for p, found in problems.items() if found):
            raise SystemExit(f"error: --upft.trained_logits: {problem}")
        attention_mask = kwargs["attention_mask"]
        position_ids = attention_mask.long().cumsum(-1) - 1  # as OpenRLHF's Actor.forward
        position_ids.masked_fill_(attention_mask == 0, 1)
        trained = loss_mask.to(sequences.device).squeeze(1)[:, :-1].bool()  # position t predicts token t+1
        select = self.model.get_output_embeddings().register_forward_pre_hook(
            lambda module, args: (args[0][:, :-1][trained],))
        try:
            output = self.model(sequences, attention_mask=attention_mask, position_ids=position_ids)
        finally:
            select.remove()
        logits = output["logits"].float()  # (trained positions, vocabulary), float32 as OpenRLHF's
        if self.temperature != 1.0:  # as OpenRLHF: no second float32 copy where it would change nothing
            logits = logits / self.temperature
        logps = torch.zeros(trained.shape, dtype=torch.float32, device=sequences.device)
        logps[trained] = -F.cross_entropy(logits, sequences[:, 1:][trained], reduction="none")
        return (logps, output) if kwargs["return_output"] else logps

    return wrapper


def remembering_masks(accumulate, pending: list):
    """OpenRLHF's ``iter_grad_accum_global_norm`` (the training loop's micro-batches), putting each
    micro-batch's loss mask in ``pending`` just before the loop runs the model on it."""

    @functools.wraps(accumulate)
    def wrapper(*args, **kwargs):
        try:
            for batch, info in accumulate(*args, **kwargs):
                pending[:] = [batch[2]]
                yield batch, info
        finally:
            pending.clear()

    return wrapper


STEP_TOKENS = "tuning_tokens_rank0"  # the per-step scalar OpenRLHF logs (TensorBoard: train/<this>)


def counting_tokens(accumulate, counts: list):
    """OpenRLHF's ``iter_grad_accum_global_norm``, which the training loop calls once per optimizer step
    with that step's micro-batches, appending to ``counts`` how many tokens the step trains on this rank:
    the sum of its loss masks as the loss reduces them (the loop's ``mask_fn``). The batches are still on
    the CPU there, so counting adds no wait on the GPU. ``checked`` logs the counts with the next logged
    step (each step, as the launcher asks OpenRLHF to log), which lets the launcher measure tokens/s over
    the steps it chooses (``timing``) from the tokens those steps really had, not from the run's average row."""

    @functools.wraps(accumulate)
    def wrapper(data_iter, strategy, accumulated_gradient, mask_fn):
        window = list(data_iter)
        counts.append(sum(int(mask_fn(batch).sum()) for batch in window))
        yield from accumulate(window, strategy, accumulated_gradient, mask_fn)

    return wrapper


def one_end_per_row(tokenizer):
    """The tokenizer with the end-of-turn token as its eos (guard 4 above)."""
    from upft.models import end_of_turn_token

    eot = end_of_turn_token(tokenizer)
    if eot != tokenizer.eos_token:
        tokenizer.eos_token = eot
    return tokenizer


def install(loss_avg: str, group_by_length: bool = False, data_procs: int | None = None,
            profile_steps: int = 0, causal_attention: bool = False, trained_logits: bool = False) -> None:
    """Apply the four guards (and the options and phase lines) to the imported OpenRLHF modules."""
    import openrlhf.datasets
    import openrlhf.models.actor
    import openrlhf.utils
    import torch
    from deepspeed.ops.op_builder.builder import OpBuilder
    from openrlhf.models import SFTLoss
    from openrlhf.trainer import sft_trainer
    from openrlhf.utils.deepspeed import deepspeed as ds

    OpBuilder.load = timed_op_load(OpBuilder.load)
    strategy = ds.DeepspeedStrategy
    strategy.prepare, strategy.save_model = timed(strategy.prepare, "prepare"), timed(strategy.save_model, "save")
    fit = profiled(sft_trainer.SFTTrainer.fit, strategy, profile_steps) if profile_steps else sft_trainer.SFTTrainer.fit
    sft_trainer.SFTTrainer.fit = timed(fit, "fit")
    if data_procs:
        init = openrlhf.datasets.SFTDataset.__init__

        @functools.wraps(init)
        def init_procs(self, *args, **kwargs):
            kwargs.setdefault("num_processors", data_procs)
            return init(self, *args, **kwargs)

        openrlhf.datasets.SFTDataset.__init__ = init_procs
    if group_by_length:
        plain, setup = ds.DistributedSampler, ds.DeepspeedStrategy.setup_dataloader
        grouped = length_grouped(plain)

        @functools.wraps(setup)
        def setup_grouped(self, replay_buffer, batch_size, *args, **kwargs):
            ds.DistributedSampler = functools.partial(grouped, window=batch_size * self.accumulated_gradient)
            try:
                return setup(self, replay_buffer, batch_size, *args, **kwargs)
            finally:
                ds.DistributedSampler = plain

        ds.DeepspeedStrategy.setup_dataloader = setup_grouped
    if causal_attention:
        actor_init = openrlhf.models.actor.Actor.__init__

        @functools.wraps(actor_init)
        def init_causal(self, *args, **kwargs):
            actor_init(self, *args, **kwargs)
            self.model.register_forward_pre_hook(causal_only, with_kwargs=True)

        openrlhf.models.actor.Actor.__init__ = init_causal
    if trained_logits:
        pending: list = []
        actor = openrlhf.models.actor.Actor
        actor.forward = trained_forward(actor.forward, pending)
        sft_trainer.iter_grad_accum_global_norm = remembering_masks(sft_trainer.iter_grad_accum_global_norm, pending)

    get_tokenizer = openrlhf.utils.get_tokenizer  # train_sft imports it from here when it runs
    openrlhf.utils.get_tokenizer = functools.wraps(get_tokenizer)(
        lambda *args, **kwargs: one_end_per_row(get_tokenizer(*args, **kwargs)))

    counts: list[int] = []
    sft_trainer.iter_grad_accum_global_norm = counting_tokens(sft_trainer.iter_grad_accum_global_norm, counts)
    torch.backends.cuda.enable_cudnn_sdp(False)
    sft_trainer.SFTLoss = functools.partial(SFTLoss, token_level_loss=loss_avg == "token")
    save = sft_trainer.SFTTrainer.save_logs_and_checkpoints

    @functools.wraps(save)
    def checked(self, args, global_step, step_bar, logs_dict=None, client_states=None):
        try:  # the same check as the local trainer's, reported as one error line from this process
            check_finite(global_step, {k: v for k, v in (logs_dict or {}).items() if isinstance(v, float)})
        except UserError as e:
            raise SystemExit(f"error: {e}") from None
        if counts and global_step % args.logger.logging_steps == 0:  # a step OpenRLHF logs (as it decides):
            # the tokens this rank trained since the last logged step, beside its loss
            logs_dict = {**(logs_dict or {}), STEP_TOKENS: sum(counts)}
            counts.clear()
        return save(self, args, global_step, step_bar, logs_dict, client_states)

    sft_trainer.SFTTrainer.save_logs_and_checkpoints = checked


def main() -> None:
    mark("start")
    options, rest = split_args(sys.argv[1:])
    install(**options)
    sys.argv = ["openrlhf.cli.train_sft", *rest]
    runpy.run_module("openrlhf.cli.train_sft", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
