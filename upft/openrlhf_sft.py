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
"""

from __future__ import annotations

import functools
import runpy
import sys

from upft.health import check_finite
from upft.errors import UserError

LOSS_FLAG = "--upft.loss_avg"


def split_args(argv: list[str]) -> tuple[str, list[str]]:
    """Our ``--upft.loss_avg VALUE`` and the flags that go to OpenRLHF unchanged."""
    rest, loss_avg = [], "sample"
    it = iter(argv)
    for arg in it:
        if arg == LOSS_FLAG:
            loss_avg = next(it, "")
        elif arg.startswith(LOSS_FLAG + "="):
            loss_avg = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    if loss_avg not in ("sample", "token"):
        raise SystemExit(f"error: {LOSS_FLAG} must be 'sample' or 'token', got '{loss_avg}'")
    return loss_avg, rest


def one_end_per_row(tokenizer):
    """The tokenizer with the end-of-turn token as its eos (guard 4 above)."""
    from upft.models import end_of_turn_token

    eot = end_of_turn_token(tokenizer)
    if eot != tokenizer.eos_token:
        tokenizer.eos_token = eot
    return tokenizer


def install(loss_avg: str) -> None:
    """Apply the four guards to the imported OpenRLHF modules."""
    import openrlhf.utils
    import torch
    from openrlhf.models import SFTLoss
    from openrlhf.trainer import sft_trainer

    get_tokenizer = openrlhf.utils.get_tokenizer  # train_sft imports it from here when it runs
    openrlhf.utils.get_tokenizer = functools.wraps(get_tokenizer)(
        lambda *args, **kwargs: one_end_per_row(get_tokenizer(*args, **kwargs)))

    torch.backends.cuda.enable_cudnn_sdp(False)
    sft_trainer.SFTLoss = functools.partial(SFTLoss, token_level_loss=loss_avg == "token")
    save = sft_trainer.SFTTrainer.save_logs_and_checkpoints

    @functools.wraps(save)
    def checked(self, args, global_step, step_bar, logs_dict=None, client_states=None):
        try:  # the same check as the local trainer's, reported as one error line from this process
            check_finite(global_step, {k: v for k, v in (logs_dict or {}).items() if isinstance(v, float)})
        except UserError as e:
            raise SystemExit(f"error: {e}") from None
        return save(self, args, global_step, step_bar, logs_dict, client_states)

    sft_trainer.SFTTrainer.save_logs_and_checkpoints = checked


def main() -> None:
    loss_avg, rest = split_args(sys.argv[1:])
    install(loss_avg)
    sys.argv = ["openrlhf.cli.train_sft", *rest]
    runpy.run_module("openrlhf.cli.train_sft", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
