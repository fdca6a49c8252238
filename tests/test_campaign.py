"""The comparison campaign's job graph and scheduler (upft.campaign) and its summary
(upft.comparison): the learning-rate choice, resuming from committed results, refused trainings,
GPU assignment, packing and the paired bootstrap. Jobs here are small shell commands standing in
for the GPU commands (the commands themselves are tested where they live)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from upft.campaign import Campaign, Job, Scheduler
from upft.comparison import figure, pack, paired_bootstrap, summarise, tables, zero3_figure

DEV = {"1e-6": 60.0, "1e-5": 40.0, "3e-6": 62.0}  # 1e-6 and 1e-5 differ sharply: 3e-6 is tried


def _campaign(tmp_path: Path, refuse: str = "train:upft_L16:1e-5", crash: str = "") -> tuple[Campaign, list]:
    c = Campaign(model="M.gguf", data="D", runs=tmp_path / "runs", results=tmp_path / "results")
    real = c.jobs()
    log = tmp_path / "order.log"

    def fake(job):
        def cmd(job=job):
            if job.name == refuse:
                return ["sh", "-c", "echo 'error: the trained model stops early; no model was written'; exit 2"]
            if job.name == crash:
                return ["sh", "-c", "echo 'error: CUDA out of memory'; exit 1"]
            rel = job.resolve("result")
            body = "{}"
            if job.name.startswith("dev:"):
                lr = job.name.split(":")[2] if job.name.count(":") == 2 else "base"
                body = json.dumps({"benchmarks": {"gsm8k": {"accuracy": DEV.get(lr, 50.0)}}})
            out = c.runs / rel if rel else c.runs / "x"
            return ["sh", "-c", f"echo {shlex.quote(job.name)} $CUDA_VISIBLE_DEVICES >> {log}; "
                                f"mkdir -p {out.parent} && echo {shlex.quote(body)} > {out}"]
        job.cmd = cmd
        return job

    jobs = [fake(j) for j in real if j.name != "zero3"]
    c.jobs = lambda: jobs
    return c, jobs


def test_real_commands_are_our_entry_points(tmp_path):
    c = Campaign(model="M.gguf", data="D", runs=tmp_path / "runs", results=tmp_path / "res")
    jobs = {j.name: j for j in c.jobs()}
    pool = jobs["sample:rft:s0"]
    assert pool.gpus == -1 and "--until" in pool.cmd and "data_parallel" not in " ".join(pool.cmd)
    assert pool.command(["0", "3"])[-2:] == ["--set", "sample.data_parallel_size=2"]  # one engine per GPU it gets
    assert "train.lr=1e-5" in jobs["train:sft:1e-5"].cmd and jobs["train:sft:1e-5"].cmd[:3] == [
        "python", "-m", "upft.experiment"]
    dev = jobs["dev:sft:1e-6"].cmd
    assert dev[1] == "eval/run_eval.py" and dev[dev.index("--data-dir") + 1] == str(tmp_path / "runs" / "split")
    assert jobs["train:label_filter:1e-6"].after == ("split", "sample:rft:s0")  # one pool for RFT and Label Filter


def test_later_seeds_rft_pools_come_last(tmp_path, capsys):
    """A lease finishing seed 1 and starting seed 2: seed 1's RFT pool goes first on every GPU,
    then seed 1's tests and seed 2's one-GPU pools; seed 2's RFT pool, which would hold half the
    GPUs for a quarter of an hour, only after everything else has started. The order is the
    scheduler's own ("start" lines), not the jobs' (two started at once may write in either order)."""
    c = Campaign(model="M.gguf", data="D", runs=tmp_path / "runs", results=tmp_path / "res", seeds=(1, 2))
    for m in ("sft", "upft_L16", "upft_L32", "rft", "label_filter"):  # seed 0's rate search is committed
        for lr in ("1e-6", "1e-5"):
            dev = c.results / "runs" / f"{m}-lr{lr}-s0" / "eval-dev"
            dev.mkdir(parents=True)
            (dev / "summary.json").write_text(json.dumps({"benchmarks": {"gsm8k": {"accuracy": 60.0}}}))
    s = Scheduler(c, ["0", "1"], poll_s=0.01)
    for job in s.jobs:
        def cmd(job=job):
            out = c.runs / job.resolve("result")
            return ["sh", "-c", f"mkdir -p {out.parent} && echo '{{}}' > {out}"]
        job.cmd = cmd
    assert s.run() == 0
    order = [ln.split()[3] for ln in capsys.readouterr().out.splitlines() if ln.split()[2:3] == ["start"]]
    assert order[:2] == ["split", "sample:rft:s1"] and order[-3:][0] == "sample:rft:s2"
    assert set(order[-2:]) == {"test:rft:s2", "test:label_filter:s2"}


def test_training_waits_for_the_split_when_the_pools_came_from_an_earlier_lease(tmp_path):
    """Pools travel between leases, the split does not: every training reads the split's question
    file, so the split runs first even though no sampling job needs it."""
    c, jobs = _campaign(tmp_path, refuse="")
    for job in jobs:  # the pools came along; the base model's runs are committed
        root = c.runs if job.name.startswith("sample:") else c.results if job.name.endswith(":base") else None
        if root:
            (root / job.resolve("result")).parent.mkdir(parents=True)
            (root / job.resolve("result")).write_text(json.dumps({"benchmarks": {"gsm8k": {"accuracy": 50.0}}}))
    assert Scheduler(c, ["0", "1"], poll_s=0.01).run() == 0
    order = [x.split()[0] for x in (tmp_path / "order.log").read_text().splitlines()]
    assert order[0] == "split" and not any(x.startswith("sample:") or x.endswith(":base") for x in order)


def test_a_job_that_succeeds_on_a_rerun_leaves_no_failure_behind(tmp_path):
    c, _ = _campaign(tmp_path, refuse="", crash="train:rft:1e-6")
    assert Scheduler(c, ["0", "1"], poll_s=0.01).run() == 1
    failed = c.runs / "runs" / "rft-lr1e-6-s0" / "failed.json"
    assert failed.is_file()
    c, _ = _campaign(tmp_path, refuse="")  # the same lease, started again
    s = Scheduler(c, ["0", "1"], poll_s=0.01)
    assert s.run() == 0 and s.state["train:rft:1e-6"] == "done" and not failed.exists()


def test_scheduler_chooses_lr_on_dev_records_refusals_and_resumes(tmp_path):
    c, _ = _campaign(tmp_path)
    s = Scheduler(c, ["0", "1"], poll_s=0.01)
    assert s.run() == 1  # the refused training
    assert s.state["train:upft_L16:1e-5"] == "failed" and s.state["dev:upft_L16:1e-5"] == "skipped"
    failed = json.loads((c.runs / "runs" / "upft_L16-lr1e-5-s0" / "failed.json").read_text())
    assert failed["job"] == "train:upft_L16:1e-5" and failed["final"]
    assert failed["error"] == "the trained model stops early; no model was written"
    assert s.state["train:sft:3e-6"] == "done"  # 60 vs 40 on dev: the rate in between is tried
    assert c.lr_choice("sft") == "3e-6" and c.lr_choice("upft_L16") == "3e-6"
    assert (c.runs / "runs" / "sft-lr3e-6-s0" / "run.json").is_file()  # the test run uses the chosen rate
    order = (tmp_path / "order.log").read_text().splitlines()
    assert order.index("sample:rft:s0 0,1") < min(i for i, x in enumerate(order) if x.startswith("test:base"))
    assert not any(x.startswith("test:") and x.split()[0].endswith("s0") and "lr" in x for x in order)
    # a new lease: only the committed results are there; nothing is redone, the refusal is not retried
    c.runs.rename(c.results)
    again = Scheduler(c, ["0"], poll_s=0.01).plan()
    assert again["test:sft:s0"] == "done" and again["train:sft:3e-6"] == "unneeded"
    assert again["train:upft_L16:1e-5"] == "failed"
    assert [n for n, st in again.items() if st == "pending"] == ["dev:upft_L16:1e-5"]  # ends as skipped


def test_a_pool_starts_on_half_the_gpus_rather_than_wait_for_a_long_job(tmp_path):
    """A data-parallel pool waiting behind a 2-GPU job on a 4-GPU node starts on the 2 free GPUs,
    one vLLM engine each, instead of idling them until the long job ends."""
    c = Campaign(model="M.gguf", data="D", runs=tmp_path / "runs", results=tmp_path / "res")
    log = tmp_path / "order.log"

    def job(name: str, gpus: int, script: str) -> Job:
        return Job(name, ["sh", "-c", f"{script}; echo {name} $CUDA_VISIBLE_DEVICES $1 >> {log}; touch {c.runs / name}"],
                   name, gpus=gpus)

    jobs = [job("long", 2, "sleep 1"), job("pool", -1, "true"), job("one", 1, "true")]
    c.jobs = lambda: jobs
    assert Scheduler(c, ["0", "1", "2", "3"], poll_s=0.01).run() == 0
    assert log.read_text().splitlines()[0] == "pool 2,3 sample.data_parallel_size=2"


def test_a_job_wanting_more_gpus_than_the_campaign_has_is_skipped_not_waited_for(tmp_path):
    """The 2-GPU ZeRO-3 check on a 1-GPU node: skipped with a line, and the campaign ends."""
    import threading

    c = Campaign(model="M.gguf", data="D", runs=tmp_path / "runs", results=tmp_path / "res")
    jobs = [Job(name, ["sh", "-c", f"touch {c.runs / name}"], name, gpus=gpus)
            for name, gpus in (("two", 2), ("pool", -1), ("one", 1))]
    c.jobs = lambda: jobs
    s = Scheduler(c, ["0"], poll_s=0.01)
    t = threading.Thread(target=s.run, daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive() and s.state == {"two": "skipped", "pool": "done", "one": "done"}


def test_no_sharp_disagreement_no_extra_rate(tmp_path, monkeypatch):
    monkeypatch.setitem(DEV, "1e-5", 58.0)
    c, _ = _campaign(tmp_path, refuse="")
    s = Scheduler(c, ["0", "1", "2"], poll_s=0.01)
    assert s.run() == 0
    assert s.state["train:rft:3e-6"] == "unneeded" and s.state["dev:rft:3e-6"] == "unneeded"
    assert c.lr_choice("rft") == "1e-6"


def _eval(run: Path, accs: dict[str, list[int]], short: int = 0) -> None:
    """An evaluated run; its first ``short`` answers end by themselves after 40 tokens, the rest after 300."""
    (run / "eval").mkdir(parents=True, exist_ok=True)
    summ = {"benchmarks": {b: {"accuracy": 100 * sum(v) / len(v)} for b, v in accs.items()}}
    (run / "eval" / "summary.json").write_text(json.dumps(summ))
    (run / "run.json").write_text("{}")
    for b, v in accs.items():
        rows = [{"id": f"q{i}", "correct": bool(x), "n_tokens": 40 if i < short else 300, "finish_reason": "stop",
                 "response": "r",
                 "gold": "1"} for i, x in enumerate(v)]
        (run / "eval" / f"{b}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_pack_and_summary(tmp_path):
    runs = tmp_path / "runs"
    n = 200
    base = [i % 2 for i in range(n)]  # 50%
    better = [1 if i % 2 or i % 5 == 0 else 0 for i in range(n)]  # 60%
    _eval(runs / "runs" / "base-s0", {"gsm8k": base, "math500": base})
    for seed in (0, 1):
        run = runs / "runs" / f"sft-lr1e-6-s{seed}"
        _eval(run, {"gsm8k": better, "math500": base}, short=20 if seed == 0 else 0)
        (run / "prep").mkdir()
        (run / "prep" / "stats.json").write_text(json.dumps({"sampling_tokens": 900, "tuning_tokens": 300}))
        (run / "jobs.json").write_text(json.dumps({"test:sft:s0": {"wall_s": 120, "gpus": 1},
                                                   "dev:sft:1e-6": {"wall_s": 600, "gpus": 1}}))
        (run / "model").mkdir()
        (run / "model" / "model.safetensors").write_text("weights")
        (run / "model" / "manifest.json").write_text(json.dumps({"wall_s": 200.0 + 100 * seed}))
        (run / "run.json").write_text(json.dumps({"stages": {"sample": f"../samples-{seed}", "train": "model",
                                                             "eval": "eval"}}))
        (runs / "runs" / f"samples-{seed}").mkdir()
        (runs / "runs" / f"samples-{seed}" / "manifest.json").write_text(json.dumps({"wall_s": 50.0}))
        for b, wall in (("gsm8k", 30.0), ("math500", 10.0)):
            (run / "eval" / f"{b}.summary.json").write_text(json.dumps({"wall_s": wall}))
    (runs / "runs" / "sft-s0.sampled").write_text(json.dumps({"wall_s": 60, "gpus": 2}))
    (runs / "runs" / "sft-lr1e-6-s2").mkdir()  # seed 2's training was refused: listed, not averaged away
    (runs / "runs" / "sft-lr1e-6-s2" / "failed.json").write_text(json.dumps(
        {"job": "test:sft:s2", "error": "the trained model stops early; no model was written", "final": True}))
    (runs / "runs" / "sft-lr1e-6-s0" / "eval-dev").mkdir()
    (runs / "runs" / "sft-lr1e-6-s0" / "eval-dev" / "summary.json").write_text(
        json.dumps({"benchmarks": {"gsm8k": {"accuracy": 61.0}}}))
    out = tmp_path / "packed"
    pack(runs, out)
    assert not (out / "runs" / "sft-lr1e-6-s0" / "model" / "model.safetensors").exists()
    assert not (out / "runs" / "base-s0" / "eval" / "gsm8k.jsonl").exists()
    correct = json.loads((out / "runs" / "base-s0" / "eval" / "gsm8k.correct.json").read_text())
    assert correct["correct"] == base and len((out / "runs" / "base-s0" / "eval" / "gsm8k.first5.jsonl")
                                              .read_text().splitlines()) == 5
    s = summarise(out, "qwen", "H100", ["cmd"])
    sft = s["methods"]["sft"]
    assert s["lr_choice"]["sft"]["chosen"] == "1e-6" and sft["lr"] == 1e-6
    assert sft["seeds"]["0"]["gsm8k"] == 60.0 and sft["mean"]["gsm8k"] == 60.0 and sft["std"]["gsm8k"] == 0.0
    assert sft["seeds"]["0"]["gpu_minutes"] == 4.0  # 120 s test + 60 s x 2 GPUs of pool; dev eval left out
    lo, hi = sft["paired_vs_base"]["gsm8k"]
    assert 0 < lo < 10 < hi < 20  # +10 points, paired: the interval excludes 0
    assert sft["paired_vs_base"]["math500"] == [0.0, 0.0]
    assert (sft["seeds"]["0"]["gsm8k_short"], sft["mean"]["gsm8k_short"]) == (10.0, 5.0)  # 20 of 200 answers, then none
    assert sft["short_answers"]["0"] == {"n_short": 20, "n_rest": 180, "acc_short": 60.0, "base_acc_short": 50.0,
                                         "acc_rest": 60.0, "base_acc_rest": 50.0}
    md = tables(s)
    assert s["refused"] == {"sft": {"2": "the trained model stops early; no model was written"}}
    assert "| SFT | 1e-06 | 2 (+1 refused) | 60.0 ± 0.0 | [+" in md
    assert "not in the mean: SFT seed 2: the trained model stops early" in md
    assert ("Short answers, SFT seed 0: 20 GSM8K answers end within 96 tokens, 60.0% right (the base model on those "
            "questions: 50.0%); on the other 180: 60.0% (base 50.0%)") in md and "SFT seed 1" not in md and "| base | – | 1 | 50.0 | – | 50.0 | – | 0.0 |" in md
    assert "| 50.0 ± 0.0 | [+0.0, +0.0] | 5.0 ± 7.1 |" in md
    assert (sft["seeds"]["1"]["sampling_s"], sft["seeds"]["1"]["training_s"], sft["seeds"]["1"]["eval_s"]) == (50, 300, 40)
    assert "| SFT | 0.00M | 0.00M | 50 (on 2 GPUs) | 250 | 40 | 3.0 |" in md  # seed 1 has no pool of its own here
    base_run = s["methods"]["base"]["seeds"]["0"]  # samples and trains nothing; no eval summaries in this fixture
    assert (base_run["sampling_s"], base_run["training_s"], base_run["eval_s"]) == (0.0, 0.0, 0.0)
    assert figure(s, tmp_path / "f.png").stat().st_size > 1000


def test_zero3_check_compares_the_two_loss_curves_step_by_step(tmp_path):
    res = tmp_path / "results"
    _eval(tmp_path / "runs" / "runs" / "base-s0", {"gsm8k": [1, 0], "math500": [1, 0]})
    pack(tmp_path / "runs", res)
    assert "zero3_check" not in summarise(res, "qwen", "H100", []) and zero3_figure({}, tmp_path / "z.png") is None
    one, z3 = res / "runs" / "upft_L32-lr1e-5-s0", res / "runs" / "zero3"
    (one / "eval-dev").mkdir(parents=True)
    (one / "eval-dev" / "summary.json").write_text(json.dumps({"benchmarks": {"gsm8k": {"accuracy": 58.0}}}))
    for run, losses in ((one, [0.9, 0.5, 0.3]), (z3, [0.95, 0.5, 0.2])):
        (run / "model").mkdir(parents=True)
        (run / "model" / "train_log.jsonl").write_text(
            "".join(json.dumps({"step": i + 1, "loss_mean": x}) + "\n" for i, x in enumerate(losses)))
    s = summarise(res, "qwen", "H100", [])
    z = s["zero3_check"]
    assert (z["steps"], z["max_abs_diff"], z["mean_abs_diff"]) == ([3, 3], 0.1, 0.05)
    assert "2 GPUs (ZeRO-3) 3 steps; per-step loss differs by 0.05 on average, 0.1 at most" in tables(s)
    assert zero3_figure(s, tmp_path / "z.png").stat().st_size > 1000


def test_paired_bootstrap_needs_shared_questions():
    from upft.errors import UserError

    with pytest.raises(UserError):
        paired_bootstrap({"a": 1.0}, {"b": 0.0})
    lo, hi = paired_bootstrap({str(i): float(i % 2) for i in range(100)}, {str(i): float(i % 2) for i in range(100)})
    assert lo == hi == 0.0


def test_zero3_command_is_the_one_gpu_run_on_two(tmp_path):
    """The ZeRO-3 check builds the chosen seed-0 UPFT L=32 training set (runner --until prep) and
    trains on it on 2 GPUs: the launcher takes its command line, with the 1-GPU run's settings."""
    from upft.configs import read_config
    from upft.openrlhf_launcher import parse

    c = Campaign(model="M.gguf", data="D", runs=tmp_path / "runs", results=tmp_path / "res")
    for lr, acc in (("1e-6", 60.0), ("1e-5", 58.0)):
        dev = c.runs / "runs" / f"upft_L32-lr{lr}-s0" / "eval-dev"
        dev.mkdir(parents=True)
        (dev / "summary.json").write_text(json.dumps({"benchmarks": {"gsm8k": {"accuracy": acc}}}))
    kind, flag, line = c.zero3()
    prep, train_line = line.split(" && ")
    assert (kind, flag) == ("bash", "-c") and "--until prep" in prep and "name=upft_L32-lr1e-6-s0" in prep
    cmd = shlex.split(train_line)
    assert cmd[:2] == ["bash", "scripts/train_sft.sh"]
    job = parse(cmd[2:])
    train = read_config(Path("configs/qwen1.5b-gsm8k/upft-L32.yaml"))["train"]
    one = {k: v for k, v in train.items() if k not in ("trainer", "gpus", "zero_stage", "lr")}
    assert {k: getattr(job.settings, k) for k in one} == one
    assert (job.settings.gpus, job.settings.zero_stage, job.settings.lr) == (2, 3, 1e-6)
    assert job.data.endswith("upft_L32-lr1e-6-s0/prep")


def test_a_crash_is_tried_again_by_the_next_lease(tmp_path):
    c, _ = _campaign(tmp_path, refuse="", crash="train:rft:1e-6")
    s = Scheduler(c, ["0", "1"], poll_s=0.01)
    assert s.run() == 1 and s.state["train:rft:1e-6"] == "failed"
    failed = json.loads((c.runs / "runs" / "rft-lr1e-6-s0" / "failed.json").read_text())
    assert failed["error"] == "CUDA out of memory" and not failed["final"]
    c.runs.rename(c.results)
    again = Scheduler(c, ["0"], poll_s=0.01).plan()
    assert again["train:rft:1e-6"] == "pending" and again["dev:rft:1e-6"] == "pending"


def test_short_answers_need_the_base_models_questions(tmp_path):
    from upft.comparison import short_answers
    from upft.errors import UserError

    def run(name: str, ids: list[str], n_tokens: int) -> Path:
        (tmp_path / name / "eval").mkdir(parents=True)
        (tmp_path / name / "eval" / "gsm8k.correct.json").write_text(json.dumps(
            {"ids": ids, "correct": [1] * len(ids), "n_tokens": [n_tokens] * len(ids), "stopped": [1] * len(ids)}))
        return tmp_path / name / "eval"

    base = run("base", ["a", "b"], 300)
    assert short_answers(run("all-short", ["a", "b"], 40), base) == {
        "n_short": 2, "n_rest": 0, "acc_short": 100.0, "base_acc_short": 100.0, "acc_rest": None, "base_acc_rest": None}
    with pytest.raises(UserError, match="not the base model's"):
        short_answers(run("other", ["a", "c"], 40), base)
