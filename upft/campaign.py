"""The comparison campaign: base, SFT, UPFT (L=16, 32), RFT and Label Filter over seeds, as a
graph of jobs run over the GPUs of one node, resumable across leases of a GPU machine.

  python scripts/gpu/comparison.py run --model M --data D --runs R --results results/gpu/comparison

Every job is one of our own commands (the experiment runner, the eval command, the OpenRLHF
launcher), so the campaign adds nothing a user could not type; ``--dry-run`` prints them. The
learning rate of each method is chosen on the dev split (``data_prep/split_dev.py``, 500
questions, seed 0) with seed 0, from the dev accuracies at 1e-6 and 1e-5, plus 3e-6 when those
two differ by more than ``SHARP`` points or one was refused by the model check; the chosen rate
then holds for every seed's test runs. No choice looks at a test set.

A job is done when its result is in this lease's run folders or in the committed results (the
summaries earlier leases brought back: weights and sample pools never leave the node), and a job
runs only if a job that is not done needs it. A job whose command fails (a training the model
check refuses, say) leaves ``<run>/failed.json`` with its last ``error:`` line; jobs that need
its output are skipped. A refusal by the model check is final; any other failure is tried again
by the next lease.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from upft.errors import UserError
from upft.runio import read_json, write_json

METHODS = {"base": "base", "sft": "sft", "upft_L16": "upft-L16", "upft_L32": "upft-L32", "rft": "rft",
           "label_filter": "label_filter"}  # summary name -> config file stem
POOL_OF = {"label_filter": "rft"}  # Label Filter cuts its set from the RFT pool
LRS = ("1e-6", "1e-5")
EXTRA_LR = "3e-6"
SHARP = 5.0  # dev accuracy points between the two rates that call for the one in between
ZERO3_METHOD = "upft_L32"  # the 2-GPU ZeRO-3 run repeats this method's seed-0 training
TERMINAL = ("done", "failed", "skipped", "unneeded")


def port(name: str) -> str:
    """A master port per run, so trainings on other GPUs of the node never share one (the port is
    not part of a run's fingerprint)."""
    return f"train.master_port={29500 + zlib.crc32(name.encode()) % 2000}"


def refused(error: str | None) -> bool:
    """Whether a failed job's error is a verdict on its training (the health checks' refusals all
    end so, see upft.health), which a new lease would only repeat; anything else (out of memory,
    a crash) is tried again."""
    return bool(error) and "no model was written" in error


def run_name(method: str, lr: str | None, seed: int) -> str:
    """A run folder's name: method, learning rate (none for base) and seed."""
    return f"{method}-lr{lr}-s{seed}" if lr else f"{method}-s{seed}"


@dataclass
class Job:
    """One command of the campaign.

    ``gpus``: 0 = none, -1 = vLLM data parallel over every free GPU, once half of the campaign's
    are free (a pool need not wait for a long job on the others). ``after``: jobs that must be done;
    ``waits``: jobs that must only have ended (a refused rate still lets the choice go on).
    ``cmd`` and ``result`` may be functions, for jobs whose run depends on the chosen rate.
    ``local``: the result only counts from this lease (a trained model, a sample pool).
    ``last``: started only after every other job that can start (the list itself stays in
    dependency order, which the plan needs).
    """

    name: str
    cmd: list[str] | Callable[[], list[str]]
    result: str | Callable[[], str | None]
    gpus: int = 1
    after: tuple[str, ...] = ()
    waits: tuple[str, ...] = ()
    when: Callable[[], bool] | None = None
    run: str | Callable[[], str] | None = None
    local: bool = False
    last: bool = False

    def resolve(self, attr: str):
        value = getattr(self, attr)
        return value() if callable(value) else value

    def command(self, gpus: list[str]) -> list[str]:
        """The command to start on ``gpus``: a data-parallel job runs one vLLM engine on each."""
        cmd = self.resolve("cmd")
        return [*cmd, "--set", f"sample.data_parallel_size={len(gpus)}"] if self.gpus == -1 else cmd


@dataclass
class Campaign:
    """Where things are and what to run. ``results``: the committed copy of earlier leases."""

    model: str
    data: str
    runs: Path
    results: Path
    configs: Path = Path("configs/qwen1.5b-gsm8k")
    seeds: tuple[int, ...] = (0,)
    python: str = "python"
    extra_set: list[str] = field(default_factory=list)

    def find(self, rel: str, local: bool = False) -> Path | None:
        """A result from this lease's runs, else (unless ``local``) from the committed results."""
        for root in (self.runs,) if local else (self.runs, self.results):
            if (root / rel).exists():
                return root / rel
        return None

    # -- the learning rate ----------------------------------------------------------------
    def dev_accuracy(self, method: str, lr: str) -> float | None:
        """Seed 0's dev accuracy at ``lr``; None when that training was refused or never ran."""
        found = self.find(f"runs/{run_name(method, lr, 0)}/eval-dev/summary.json")
        return read_json(found)["benchmarks"]["gsm8k"]["accuracy"] if found else None

    def needs_extra_lr(self, method: str) -> bool:
        a, b = (self.dev_accuracy(method, lr) for lr in LRS)
        return a is None or b is None or abs(a - b) > SHARP

    def lr_choice(self, method: str) -> str | None:
        """The rate with the best dev accuracy (a tie goes to the smaller); None before any is known."""
        scored = [(acc, -float(lr), lr) for lr in (*LRS, EXTRA_LR)
                  if (acc := self.dev_accuracy(method, lr)) is not None]
        return max(scored)[2] if scored else None

    def chosen_run(self, method: str, seed: int) -> str:
        lr = self.lr_choice(method)
        if lr is None:
            raise UserError(f"{method}: every learning rate was refused or failed; see runs/*/failed.json")
        return run_name(method, lr, seed)

    # -- commands ---------------------------------------------------------------------------
    def runner(self, method: str, seed: int, lr: str | None, until: str, *more: str) -> list[str]:
        """The experiment runner on one config, up to stage ``until``."""
        cmd = [self.python, "-m", "upft.experiment", str(self.configs / f"{METHODS[method]}.yaml"),
               "--runs-dir", str(self.runs / "runs"), "--until", until, "--set", f"seed={seed}",
               "--set", f"model={self.model}", "--set", f"eval.data_dir={self.data}",
               "--set", f"questions.source={self.runs / 'split' / 'train.jsonl'}",
               "--set", f"name={run_name(method, lr, seed)}"]
        if lr is not None:
            cmd += ["--set", f"train.lr={lr}"]
        for item in (*self.extra_set, *more):
            cmd += ["--set", item]
        return cmd

    def _pool(self, cmd: list[str]) -> str:
        """The pool a sampling command fills (relative to the runs folder), as the runner names it."""
        from upft.experiment import load_config, pool_dir

        sets = [cmd[i + 1] for i, c in enumerate(cmd) if c == "--set"]
        return str(pool_dir(load_config(cmd[3], sets), Path("runs")) / "manifest.json")

    def dev_eval(self, name: str, model: str) -> list[str]:
        """GSM8K greedy on the 500 dev questions (laid out as a GSM8K mirror by split_dev)."""
        return [self.python, "eval/run_eval.py", "--model", model, "--benchmarks", "gsm8k",
                "--data-dir", str(self.runs / "split"), "--max-new-tokens", "512", "--backend", "vllm",
                "--label", f"{name} (dev)", "--out", str(self.runs / "runs" / name / "eval-dev")]

    def zero3(self) -> list[str]:
        """OpenRLHF on 2 GPUs with ZeRO-3 on the training set of the chosen seed-0 UPFT L=32 run
        (built first if this lease lacks it): its loss curve must match the 1-GPU run's."""
        lr = self.lr_choice(ZERO3_METHOD)
        if lr is None:
            raise UserError(f"{ZERO3_METHOD}: no learning rate chosen yet")
        from upft.experiment import load_config

        name = run_name(ZERO3_METHOD, lr, 0)
        prep = self.runner(ZERO3_METHOD, 0, lr, "prep", port(name))
        one = load_config(prep[3], [prep[i + 1] for i, c in enumerate(prep) if c == "--set"])["train"]
        train = ["bash", "scripts/train_sft.sh", "--data", str(self.runs / "runs" / name / "prep"),
                 "--model", self.model, "--out", str(self.runs / "runs" / "zero3" / "model"), "--gpus", "2",
                 "--zero-stage", "3", "--master-port", "28999", "--lr", lr, "--seed", "0",
                 *[f"--{k.replace('_', '-')}={v}" for k, v in one.items()
                   if k in ("epochs", "batch_size", "micro_batch", "max_len", "attn", "scheduler", "warmup_ratio",
                            "loss_avg")],
                 *(["--no-adam-offload"] if one.get("no_adam_offload") else [])]
        return ["bash", "-c", f"{shlex.join(prep)} && {shlex.join(train)}"]

    def _sweep(self, m: str) -> list[Job]:
        jobs = []
        for lr in (*LRS, EXTRA_LR):
            name, extra = run_name(m, lr, 0), lr == EXTRA_LR
            when = (lambda m=m: self.needs_extra_lr(m)) if extra else None
            waits = tuple(f"dev:{m}:{x}" for x in LRS) if extra else ()
            jobs.append(Job(f"train:{m}:{lr}", self.runner(m, 0, lr, "train", port(name)),
                            f"runs/{name}/model/config.json", after=("split", f"sample:{POOL_OF.get(m, m)}:s0"),
                            waits=waits, when=when, run=name, local=True))
            jobs.append(Job(f"dev:{m}:{lr}", self.dev_eval(name, str(self.runs / "runs" / name / "model")),
                            f"runs/{name}/eval-dev/summary.json", after=(f"train:{m}:{lr}",), when=when, run=name))
        return jobs

    def _test(self, m: str, seed: int) -> Job:
        def cmd() -> list[str]:
            lr = self.lr_choice(m)
            return self.runner(m, seed, lr, "eval", port(run_name(m, lr, seed)))

        def result() -> str | None:
            lr = self.lr_choice(m)
            return f"runs/{run_name(m, lr, seed)}/run.json" if lr else None

        return Job(f"test:{m}:s{seed}", cmd, result, after=("split", f"sample:{POOL_OF.get(m, m)}:s{seed}"),
                   waits=tuple(f"dev:{m}:{lr}" for lr in (*LRS, EXTRA_LR)) if 0 in self.seeds else (),
                   run=lambda: self.chosen_run(m, seed))

    # -- the graph -------------------------------------------------------------------------
    def jobs(self) -> list[Job]:
        """The whole campaign in priority order."""
        py, split = self.python, str(self.runs / "split")
        jobs = [Job("split", [py, "data_prep/split_dev.py", "--questions", f"{self.data}/gsm8k/train.jsonl",
                              "--n-dev", "500", "--seed", "0", "--out", split], "split/split.json", gpus=0,
                    local=True)]
        tuned = [m for m in METHODS if m != "base"]
        pools = [m for m in tuned if m not in POOL_OF]
        for seed in self.seeds:  # the first seed's RFT pool first, on every GPU (vLLM data parallel); a
            for m in sorted(pools, key=lambda m: m != "rft"):  # later seed's would hold the tests back: last
                cmd = self.runner(m, seed, None, "sample")
                jobs.append(Job(f"sample:{m}:s{seed}", cmd, self._pool(cmd), gpus=-1 if m == "rft" else 1,
                                after=("split",), local=True, last=m == "rft" and seed != self.seeds[0]))
        base = run_name("base", None, 0)
        jobs.append(Job("test:base", self.runner("base", 0, None, "eval"), f"runs/{base}/run.json", run=base,
                        after=("split",)))  # not before the pool: a job on every GPU goes first
        if 0 in self.seeds:
            jobs.append(Job("dev:base", self.dev_eval(base, self.model), f"runs/{base}/eval-dev/summary.json",
                            after=("split",), run=base))
        for seed in self.seeds:
            for m in tuned:
                if seed == 0:  # the learning-rate search, then the seed-0 test run on the chosen rate
                    jobs += self._sweep(m)
                jobs.append(self._test(m, seed))
        if 0 in self.seeds:
            jobs.append(Job("zero3", self.zero3, "runs/zero3/model/train_log.jsonl", gpus=2,
                            after=(f"sample:{ZERO3_METHOD}:s0",),
                            waits=tuple(f"dev:{ZERO3_METHOD}:{lr}" for lr in (*LRS, EXTRA_LR)), run="zero3"))
        return jobs


class Scheduler:
    """Runs a campaign's jobs over GPUs, one process per job, and keeps ``RUNS/campaign.json``.

    The GPUs it may use are re-read from ``RUNS/gpus`` (e.g. ``0,1,2,3``) on every pass, so GPUs
    busy with other work at the start can be handed over later.
    """

    def __init__(self, campaign: Campaign, gpus: list[str], poll_s: float = 5.0):
        self.c, self.poll_s = campaign, poll_s
        self.jobs = campaign.jobs()
        self.by_name = {j.name: j for j in self.jobs}
        self.capacity = len(gpus)  # the GPUs this start was given (the file may lend fewer for a while)
        self.gpus_file = campaign.runs / "gpus"
        if not self.gpus_file.exists():
            self.gpus_file.parent.mkdir(parents=True, exist_ok=True)
            self.gpus_file.write_text(",".join(gpus) + "\n")
        self.state: dict[str, str] = {}
        self.running: dict[str, tuple[subprocess.Popen, list[str], float]] = {}

    # -- what is left ------------------------------------------------------------------------
    def _done(self, job: Job) -> bool:
        rel = job.resolve("result")
        return rel is not None and self.c.find(rel, job.local) is not None

    def _failed_before(self, job: Job) -> bool:
        try:
            run = job.resolve("run")
        except UserError:
            return False
        found = run and self.c.find(f"runs/{run}/failed.json")
        return bool(found) and read_json(found).get("job") == job.name and read_json(found).get("final", False)

    def plan(self) -> dict[str, str]:
        """Each job's starting state: done, failed (committed), unneeded (nothing left needs it) or pending."""
        needed: set[str] = set()
        self.state = {j.name: "pending" for j in self.jobs}  # in priority order
        for job in reversed(self.jobs):  # dependents come after what they need
            if self._done(job):
                self.state[job.name] = "done"
            elif self._failed_before(job):
                self.state[job.name] = "failed"
            elif job.name in needed or not job.name.startswith(("sample:", "train:", "split")):
                self.state[job.name] = "pending"
                needed.update(job.after)
            else:
                self.state[job.name] = "unneeded"
        self._save()
        return dict(self.state)

    # -- running ------------------------------------------------------------------------------
    def _gpus(self) -> list[str]:
        return [g.strip() for g in self.gpus_file.read_text().split(",") if g.strip()]

    def _free(self) -> list[str]:
        busy = {g for _, gpus, _ in self.running.values() for g in gpus}
        return [g for g in self._gpus() if g not in busy]

    def _ready(self, job: Job) -> str | None:
        """"go", a final state, or None (wait)."""
        deps = [self.state[d] for d in job.after if d in self.state]
        if any(s in ("failed", "skipped") for s in deps):
            return "skipped"
        if any(s not in ("done", "unneeded") for s in deps):
            return None
        if any(self.state.get(d) not in TERMINAL for d in job.waits):
            return None
        if job.when is not None and not job.when():
            return "unneeded"
        return "go"

    def _start(self, job: Job, gpus: list[str]) -> None:
        log = self.c.runs / "logs" / f"{job.name.replace(':', '_')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        cmd = job.command(gpus)
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else dict(os.environ)
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"$ {' '.join(cmd)}\n")
            fh.flush()
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.running[job.name] = (proc, gpus, time.time())
        self.state[job.name] = "running"
        self._say(f"start {job.name} on GPUs [{','.join(gpus)}]")

    def _finish(self, job: Job, rc: int, t0: float, gpus: list[str]) -> None:
        log = self.c.runs / "logs" / f"{job.name.replace(':', '_')}.log"
        took = {"wall_s": round(time.time() - t0, 1), "gpus": len(gpus), "rc": rc}
        if rc == 0 and job.name.startswith("sample:"):  # its time, for the GPU minutes of the runs using it
            _, m, s = job.name.split(":")
            write_json(self.c.runs / "runs" / f"{m}-{s}.sampled", took)
        run = job.resolve("run")
        if run:  # each run's job times, for its GPU minutes
            times = self.c.runs / "runs" / run / "jobs.json"
            write_json(times, {**(read_json(times) if times.exists() else {}), job.name: took})
        if rc == 0 and self._done(job):
            self.state[job.name] = "done"
            stale = self.c.runs / "runs" / run / "failed.json" if run else None
            if stale and stale.is_file() and read_json(stale).get("job") == job.name:
                stale.unlink()  # an earlier start of this lease failed where this one succeeded
        else:
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
            errors = [ln.split("error: ", 1)[1] for ln in lines if "error: " in ln]
            self.state[job.name] = "failed"
            if run:
                error = errors[-1] if errors else None
                write_json(self.c.runs / "runs" / run / "failed.json",
                           {"job": job.name, "rc": rc, "error": error, "final": refused(error),
                            "log": str(log.relative_to(self.c.runs))})
        self._say(f"{self.state[job.name]} {job.name} (rc {rc}, {time.time() - t0:.0f} s)")

    def run(self) -> int:
        """Run until every job has ended; returns the number of failed jobs."""
        self.plan()
        while True:
            for name, (proc, gpus, t0) in list(self.running.items()):
                if proc.poll() is not None:
                    del self.running[name]
                    self._finish(self.by_name[name], proc.returncode, t0, gpus)
            for job in sorted(self.jobs, key=lambda j: j.last):
                if self.state[job.name] != "pending":
                    continue
                go = self._ready(job)
                if go in TERMINAL:
                    self.state[job.name] = go
                    self._say(f"{go} {job.name}")
                elif go == "go":
                    free = self._free()
                    want = max(1, -(-len(self._gpus()) // 2)) if job.gpus == -1 else job.gpus
                    if want > self.capacity:  # never enough here (the 2-GPU check on a 1-GPU node)
                        self.state[job.name] = "skipped"
                        self._say(f"skipped {job.name}: it needs {want} GPUs, the campaign has {self.capacity}")
                    elif len(free) >= want:
                        try:
                            self._start(job, free if job.gpus == -1 else free[:want])
                        except Exception as e:  # its command cannot be formed (every rate refused, say):
                            # that job fails, the campaign goes on
                            self.state[job.name] = "failed"
                            self._say(f"failed {job.name}: {e}")
                    elif job.gpus != 1:
                        break  # hold the GPUs that free up for this job rather than starve it
            self._save()
            if not self.running and not any(s == "pending" for s in self.state.values()):
                return sum(s == "failed" for s in self.state.values())
            time.sleep(self.poll_s)

    def _say(self, msg: str) -> None:
        print(f"[campaign {time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def _save(self) -> None:
        write_json(self.c.runs / "campaign.json", {"state": self.state, "running": {
            n: {"gpus": g, "since_s": round(time.time() - t0)} for n, (_, g, t0) in self.running.items()}})
