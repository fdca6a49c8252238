"""The OpenRLHF launcher's command line (CPU-checkable part of the GPU path)."""

from __future__ import annotations

import json
import time

import pytest

from conftest import run_cli
from upft.openrlhf_launcher import command, loss_curve, main, parse, timing
from upft.errors import UserError
from upft.runio import write_json


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


def test_single_node_defaults_are_the_papers(data, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cmd = command(parse(["--data", str(data.parent), "--model", "m", "--out", "o", "--gpus", "8"]))
    # our wrapper of openrlhf.cli.train_sft, with the authors' per-sample loss by default
    assert cmd[:7] == ["deepspeed", "--num_gpus=8", "--master_port=29500", "--module", "upft.openrlhf_sft",
                       "--upft.loss_avg", "sample"]
    f = flags(cmd)
    assert f["--data.dataset"] == str(data.resolve())
    assert (f["--data.input_key"], f["--data.output_key"]) == ("prompt", "response")
    assert "--data.apply_chat_template" in f and "--data.input_template" not in f
    assert (f["--adam.lr"], f["--lr_scheduler"], f["--lr_warmup_ratio"]) == ("1e-06", "constant_with_warmup", "0.03")
    assert (f["--train.batch_size"], f["--train.micro_batch_size"], f["--ds.zero_stage"]) == ("64", "1", "3")
    assert "--ds.adam_offload" in f and "--model.gradient_checkpointing_enable" in f
    assert "--upft.group_by_length" not in f  # off unless asked for
    # OpenRLHF writes to o.tmp; it becomes o only after the model check
    assert f["--ds.param_dtype"] == "bf16" and f["--ckpt.output_dir"] == "o.tmp"
    assert f["--train.seed"] == "0"


def test_loss_weighting_and_pinned_gpus(data, monkeypatch):
    """deepspeed ignores CUDA_VISIBLE_DEVICES when given --num_gpus (two pinned runs would share GPU 0)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    cmd = command(parse(["--data", str(data), "--model", "m", "--out", "o", "--gpus", "1", "--loss-avg", "token"]))
    assert cmd[1] == "--include=localhost:2" and "--num_gpus=1" not in cmd
    assert flags(cmd)["--upft.loss_avg"] == "token"
    grouped = command(parse(["--data", str(data), "--model", "m", "--out", "o", "--group-by-length"]))
    assert "--upft.group_by_length" in grouped and "--upft.causal_attention" not in grouped
    from upft.openrlhf_sft import split_args  # what our wrapper of OpenRLHF's trainer makes of it

    options = split_args(grouped[grouped.index("upft.openrlhf_sft") + 1:])[0]
    assert options == {"loss_avg": "sample", "group_by_length": True, "data_procs": 1}
    fast = command(parse(["--data", str(data), "--model", "m", "--out", "o", "--causal-attention", "--trained-logits"]))
    options = split_args(fast[fast.index("upft.openrlhf_sft") + 1:])[0]
    assert options["causal_attention"] is True and options["trained_logits"] is True
    with pytest.raises(SystemExit):
        parse(["--data", str(data), "--model", "m", "--out", "o", "--loss-avg", "mean"])


def test_tokenizing_processes_follow_the_set_size(data, tmp_path):
    """OpenRLHF's SFTDataset gets one tokenizing process per 20,000 rows (at most 8) unless told."""
    from upft.openrlhf_sft import split_args

    def procs(path, *more):
        cmd = command(parse(["--data", str(path), "--model", "m", "--out", "o", *more]))
        return split_args(cmd[cmd.index("upft.openrlhf_sft") + 1:])[0]["data_procs"]

    big = tmp_path / "big.jsonl"
    big.write_text(data.read_text() * 40_000)
    assert (procs(data), procs(big), procs(data, "--data-procs", "4")) == (1, 3, 4)
    assert split_args(["--upft.data_procs=2", "--x"]) == ({"loss_avg": "sample", "data_procs": 2}, ["--x"])
    # a profile of N micro-steps and causal attention, passed after -- to train_sft.sh
    assert split_args(["--x", "--upft.profile_steps", "8", "--upft.causal_attention", "--ds.y"]) == (
        {"loss_avg": "sample", "profile_steps": 8, "causal_attention": True}, ["--x", "--ds.y"])
    for flag in ("data_procs", "profile_steps"):
        for bad in ([f"--upft.{flag}", "0"], [f"--upft.{flag}=x"], [f"--upft.{flag}"]):
            with pytest.raises(SystemExit, match=f"{flag} must be a whole number >= 1"):
                split_args(bad)
    with pytest.raises(UserError, match="data_procs must be at least 0"):
        parse(["--data", str(data), "--model", "m", "--out", "o", "--data-procs", "-1"])


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
    with pytest.raises(UserError, match="group_by_length needs epochs: 1, got 2"):
        parse(["--data", str(data), "--model", "m", "--out", "o", "--group-by-length", "--epochs", "2"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n")
    with pytest.raises(UserError, match="message list"):
        command(parse(["--data", str(bad), "--model", "m", "--out", "o"]))
    with pytest.raises(UserError, match="not found"):
        command(parse(["--data", str(tmp_path / "none.jsonl"), "--model", "m", "--out", "o"]))


def test_config_file_sets_options_and_flags_override(data, tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("model: m\ntrain:\n  lr: 2.0e-6\n  epochs: 3\n  zero-stage: 2\n  batch_size: 16\n")
    cmd = command(parse(["--config", str(cfg), "--data", str(data), "--model", "m", "--out", "o",
                         "--epochs", "2"]))
    f = flags(cmd)
    assert (f["--adam.lr"], f["--train.max_epochs"], f["--ds.zero_stage"], f["--train.batch_size"]) == \
        ("2e-06", "2", "2", "16")
    assert f["--logger.tensorboard_dir"] == "o.tmp/tensorboard"
    cfg.write_text("train:\n  learning_rate: 1e-6\n")
    with pytest.raises(UserError, match="unknown training option 'learning_rate'"):
        parse(["--config", str(cfg), "--data", str(data), "--model", "m", "--out", "o"])
    with pytest.raises(UserError, match="--out is required"):
        parse(["--data", str(data), "--model", "m"])


def test_an_experiment_config_sets_the_launcher(data):
    from conftest import REPO

    cfg = str(REPO / "configs/qwen1.5b-gsm8k/upft-L32.yaml")  # train section via defaults:, trainer: openrlhf
    f = flags(command(parse(["--config", cfg, "--data", str(data), "--model", "m", "--out", "o"])))
    assert (f["--ds.zero_stage"], f["--train.micro_batch_size"], f["--data.max_len"]) == ("2", "16", "1024")
    assert f["--ds.attn_implementation"] == "sdpa" and "--ds.adam_offload" not in f


def test_loss_curve_is_read_from_tensorboard_events(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path / "tb" / "run"))
    for step, loss in enumerate([2.0, 1.5, 1.25], start=1):
        w.add_scalar("train/gpt_loss", loss, step)
        w.add_scalar("train/lr", 1e-6, step)
    w.add_scalar("eval/loss", 9.0, 1)
    w.close()
    curve = loss_curve(str(tmp_path / "tb"))
    assert [{k: v for k, v in p.items() if k != "wall_time"} for p in curve] == [
        {"step": 1, "gpt_loss": 2.0, "lr": pytest.approx(1e-6)}, {"step": 2, "gpt_loss": 1.5, "lr": pytest.approx(1e-6)},
        {"step": 3, "gpt_loss": 1.25, "lr": pytest.approx(1e-6)}]
    assert curve[0]["wall_time"] <= curve[-1]["wall_time"] <= time.time()


def test_timing_splits_the_wall_time():
    """Launch -> first step -> last step -> saved -> checked, op loads from the log; no tokens/s from a
    curve whose steps did not log the tokens they trained."""
    curve = [{"step": i, "wall_time": 100.0 + 10 * i} for i in range(4)]
    log = "Time to load cpu_adam op: 31.5 seconds\nTime to load fused_adam op: 0.5 seconds\n"
    t = timing(curve, t0=40.0, t_trained=150.0, t_checked=160.0, log=log)
    assert t == {"launch_to_first_step_s": 60.0, "steps_s": 30.0, "after_last_step_s": 20.0, "op_load_s": 32.0,
                 "model_check_s": 10.0, "tokens_per_s_per_gpu": None, "tokens_per_s_per_gpu_all_steps": None,
                 "steady_state_steps": None}


def test_timing_in_steady_state_from_the_tokens_each_step_trained():
    """Steps that logged the tokens they trained on rank 0: tokens/s/GPU over the later half of the steps
    (steps 4-5 of 5: 800 tokens from the end of step 3, 20 s), and over every step after the first
    (1120 tokens in 40 s); the window named by the logged steps' numbers; none if a step lacks its count."""
    from upft.openrlhf_sft import STEP_TOKENS

    curve = [{"step": i + 1, "wall_time": 100.0 + 10 * i, STEP_TOKENS: n} for i, n in enumerate([900, 200, 120, 300, 500])]
    t = timing(curve, t0=40.0, t_trained=150.0, t_checked=160.0, log="")
    assert (t["tokens_per_s_per_gpu"], t["tokens_per_s_per_gpu_all_steps"], t["steady_state_steps"]) == (40, 28, "4-5 of 5")
    assert t["steps_s"] == 40.0
    every_other = [{**point, "step": 2 * point["step"]} for point in curve]  # OpenRLHF logging every 2nd step
    assert timing(every_other, 40.0, 150.0, 160.0, "")["steady_state_steps"] == "7-10 of 10"
    two = timing(curve[:2], 40.0, 150.0, 160.0, "")  # too few steps for a steady state
    assert (two["tokens_per_s_per_gpu"], two["tokens_per_s_per_gpu_all_steps"]) == (None, 20)
    del curve[2][STEP_TOKENS]
    assert timing(curve, 40.0, 150.0, 160.0, "")["tokens_per_s_per_gpu"] is None


def test_timing_splits_launch_and_save_by_the_phase_lines():
    """Our wrapper's phase lines (rank 0, first of each name) split launch-to-first-step into
    launch, load, DeepSpeed init and the first step, and the end into save and exit."""
    from upft.openrlhf_sft import PHASE

    curve = [{"step": i, "wall_time": 100.0 + 10 * i} for i in range(4)]
    lines = ["start 45.0", "prepare_start 70.0", "Time to load fused_adam op: 3.0 seconds",
             "prepare_end 85.5", "fit_start 86.0", "fit_end 131.0", "save_start 131.0", "save_end 144.0",
             "start 99.0"]
    log = "\n".join(x if x.startswith("Time") else f"{PHASE} {x}" for x in lines) + "\n"
    t = timing(curve, t0=40.0, t_trained=150.0, t_checked=160.0, log=log)
    assert t["phases_s"] == {"launch": 5.0, "load": 25.0, "deepspeed_init": 15.5, "first_step": 14.0,
                             "save": 13.0, "exit": 6.0}
    assert t["op_load_s"] == 3.0 and t["launch_to_first_step_s"] == 60.0


def test_more_gpus_than_present_is_one_error_line(data, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    r = run_cli("upft/openrlhf_launcher.py", "--data", str(data), "--model", str(tmp_path / "m"), "--out",
                str(tmp_path / "o"), "--gpus", "2", "--batch-size", "2")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == "error: asked for 2 GPUs on this node but 0 are visible"
    assert not (tmp_path / "o").exists()
    r = run_cli("upft/openrlhf_launcher.py", "--data", str(data), "--model", str(tmp_path / "nope"), "--out", "o")
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "nope" in r.stderr


def test_folder_holding_another_run_is_refused(data, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    out = tmp_path / "o"
    out.mkdir()
    write_json(out / "manifest.json", {"fingerprint": "another run"})
    with pytest.raises(UserError, match="already holds a finished run with different settings"):
        main(["--data", str(data), "--model", str(tmp_path / "m"), "--out", str(out)])


def test_the_runner_hands_the_launcher_its_settings_not_an_argv(data, monkeypatch):
    """An experiment config's openrlhf section becomes OpenRLHFSettings (one schema with the flags)
    and reaches the launcher as a Job; the command is the one the same flags give."""
    from conftest import REPO
    from upft import experiment, openrlhf_launcher as launch

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    jobs = []
    monkeypatch.setattr(launch, "train", jobs.append)  # the GPU run itself is not for a CPU
    cfg = experiment.load_config(str(REPO / "configs/qwen1.5b-gsm8k/upft-L32.yaml"), ["seed=2"])
    experiment._train(cfg, data.parent, data.parent / "model")
    (job,) = jobs
    assert job.settings == launch.OpenRLHFSettings(**{k: v for k, v in cfg["train"].items() if k != "trainer"}, seed=2)
    by_flags = parse(["--config", str(REPO / "configs/qwen1.5b-gsm8k/upft-L32.yaml"), "--data", str(data.parent),
                      "--model", cfg["model"], "--out", str(data.parent / "model"), "--seed", "2"])
    assert command(job) == command(by_flags)


def test_fingerprint_ignores_which_gpus_and_port():
    """A run redone on other GPUs or another port is the same run (the campaign resumes on any GPU),
    but a run on more GPUs is not."""
    from upft.openrlhf_launcher import where_free

    assert where_free("--include=localhost:2") == where_free("--num_gpus=1") == "--num_gpus=1"
    assert where_free("--include=localhost:0,3") == "--num_gpus=2"
    assert where_free("--master_port=29511") == where_free("--master_port=29500")
    assert where_free("--adam.lr") == "--adam.lr"
