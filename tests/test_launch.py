"""The OpenRLHF launcher's command line (CPU-checkable part of the GPU path)."""

from __future__ import annotations

import json

import pytest

from upft.launch import command, parse
from upft.runio import UserError


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "train.jsonl"
    row = {"prompt": [{"role": "user", "content": "q"}], "response": [{"role": "assistant", "content": "a"}]}
    path.write_text(json.dumps(row) + "\n")
    return path


def flags(cmd: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for i, c in enumerate(cmd):
        if c.startswith("--"):
            nxt = cmd[i + 1] if i + 1 < len(cmd) else None
            out[c] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def test_single_node_defaults_are_the_papers(data):
    cmd = command(parse(["--data", str(data.parent), "--model", "m", "--out", "o", "--gpus", "8"]))
    assert cmd[:4] == ["deepspeed", "--num_gpus=8", "--master_port=29500", "--module"]
    f = flags(cmd)
    assert f["--data.dataset"] == str(data.resolve())
    assert (f["--data.input_key"], f["--data.output_key"]) == ("prompt", "response")
    assert "--data.apply_chat_template" in f and "--data.input_template" not in f
    assert (f["--adam.lr"], f["--lr_scheduler"], f["--lr_warmup_ratio"]) == ("1e-06", "constant_with_warmup", "0.03")
    assert (f["--train.batch_size"], f["--train.micro_batch_size"], f["--ds.zero_stage"]) == ("64", "1", "3")
    assert "--ds.adam_offload" in f and "--model.gradient_checkpointing_enable" in f
    assert f["--ds.param_dtype"] == "bf16" and f["--ckpt.output_dir"] == "o"


def test_multi_node_uses_torchrun_and_options_map(data):
    cmd = command(parse(["--data", str(data), "--model", "m", "--out", "o", "--gpus", "4", "--nnodes", "2",
                         "--node-rank", "1", "--master-addr", "10.0.0.1", "--attn", "sdpa", "--lora-rank", "8",
                         "--tensorboard", "tb", "--batch-size", "16", "--", "--ds.packing_samples"]))
    assert cmd[0] == "torchrun" and "--nnodes=2" in cmd and "--node_rank=1" in cmd and "-m" in cmd
    f = flags(cmd)
    assert f["--ds.attn_implementation"] == "sdpa" and f["--ds.lora.rank"] == "8"
    assert f["--logger.tensorboard_dir"] == "tb" and ":" not in f["--logger.wandb.run_name"]
    assert cmd[-1] == "--ds.packing_samples"


def test_bad_inputs(data, tmp_path):
    with pytest.raises(UserError, match="multiple"):
        command(parse(["--data", str(data), "--model", "m", "--out", "o", "--gpus", "3"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n")
    with pytest.raises(UserError, match="message list"):
        command(parse(["--data", str(bad), "--model", "m", "--out", "o"]))
    with pytest.raises(UserError, match="not found"):
        command(parse(["--data", str(tmp_path / "none.jsonl"), "--model", "m", "--out", "o"]))
