"""The comparison's results: what a lease brings back, and the summary, tables and figure made from it.

``pack`` copies from a campaign's run folders what is worth keeping (summaries, manifests, loss
curves, each answer's correctness; never weights, samples or generations beyond the first five)
into a folder laid out like the runs. ``summarise`` turns the committed folder into
``summary.json``: per method the chosen learning rate, each seed's accuracies, tokens and GPU
minutes, mean and std over seeds, and paired bootstrap intervals over questions; a seed whose
training the model check refused is listed under ``refused`` rather than silently left out.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from statistics import mean, stdev

from upft.campaign import EXTRA_LR, LRS, METHODS, POOL_OF, ZERO3_METHOD, Campaign, run_name
from upft.errors import UserError
from upft.openrlhf_launcher import compare_losses
from upft.runio import read_json, read_jsonl, write_json, write_jsonl, write_png

BENCHMARKS = ("gsm8k", "math500")
KEEP = ("run.json", "failed.json", "jobs.json", "split/split.json", "prep/stats.json", "prep/manifest.json",
        "model/manifest.json", "model/train_log.jsonl", "manifest.json")
SHORT = 96  # tokens: a GSM8K answer of this model that ends by itself this early stopped after its first
# step (the base model: none of 1319; UPFT's trained prefix end-of-turn is what teaches it). One
# threshold for every method (3 x 32), so the column compares; the model check uses 3 x L per run.
PAIRS = (("upft_L32", "sft"), ("upft_L32", "rft"), ("upft_L16", "sft"), ("upft_L16", "rft"))


def pack(runs: Path, dest: Path) -> int:
    """Copy the keepable files of ``runs`` into ``dest``; returns how many were written."""
    n = 0
    for f in sorted(runs.rglob("*")):
        rel = f.relative_to(runs)
        if not f.is_file() or "tmp" in f.parent.name.split(".") or rel.parts[0] == "split" and f.name != "split.json":
            continue
        keep = (any(str(rel).endswith(k) for k in KEEP) and "samples-" not in str(rel.parent)
                or rel.parent.name.startswith("samples-") and f.name == "manifest.json"
                or f.name.endswith((".summary.json", ".sampled")) or f.name == "summary.json"
                or rel.parent.name.startswith("eval") and f.name == "manifest.json"
                or str(rel) in ("campaign.json", "logs/campaign.log"))
        if keep:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest / rel)
            n += 1
        elif f.suffix == ".jsonl" and rel.parent.name.startswith("eval"):  # answers -> correctness + 5 examples
            rows = read_jsonl(f)
            out = dest / rel.parent
            out.mkdir(parents=True, exist_ok=True)
            write_json(out / f"{f.stem}.correct.json", {
                "ids": [r["id"] for r in rows], "correct": [int(bool(r["correct"])) for r in rows],
                "n_tokens": [r["n_tokens"] for r in rows], "stopped": [int(r["finish_reason"] == "stop") for r in rows]})
            write_jsonl(out / f"{f.stem}.first5.jsonl",
                        [{k: r[k] for k in ("id", "response", "gold", "correct", "n_tokens")} for r in rows[:5]])
            n += 2
    return n


def paired_bootstrap(a: dict[str, float], b: dict[str, float], n: int = 10_000, seed: int = 0) -> list[float]:
    """95% percentile interval of mean(a) - mean(b) in points, resampling questions (ids in both)."""
    ids = sorted(set(a) & set(b))
    if not ids:
        raise UserError("paired bootstrap: the two runs share no question")
    diff = [a[i] - b[i] for i in ids]
    rng, k = random.Random(seed), len(diff)
    means = sorted(sum(diff[rng.randrange(k)] for _ in range(k)) / k for _ in range(n))
    return [round(100 * means[int(0.025 * n)], 2), round(100 * means[int(0.975 * n) - 1], 2)]


def _correct(run_dir: Path, bench: str) -> dict[str, float]:
    c = read_json(run_dir / "eval" / f"{bench}.correct.json")
    return dict(zip(c["ids"], c["correct"]))


def _short(eval_dir: Path, bench: str) -> tuple[dict[str, bool], dict[str, int]]:
    """Per question of a run: whether its answer ended by itself within ``SHORT`` tokens, and whether it was right."""
    c = read_json(eval_dir / f"{bench}.correct.json")
    if not c["ids"]:
        raise UserError(f"{eval_dir}: no {bench} answers")
    return ({i: bool(s and t <= SHORT) for i, t, s in zip(c["ids"], c["n_tokens"], c["stopped"])},
            dict(zip(c["ids"], c["correct"])))


def short_share(eval_dir: Path, bench: str = "gsm8k") -> float:
    """% of a run's answers that ended by themselves within ``SHORT`` tokens."""
    short, _ = _short(eval_dir, bench)
    return round(100 * sum(short.values()) / len(short), 1)


def short_answers(eval_dir: Path, base_eval_dir: Path, bench: str = "gsm8k") -> dict:
    """Where a run's short answers (ending within ``SHORT`` tokens) come from: how many, their
    accuracy and the base model's on the same questions, and both accuracies on the other questions."""
    (short, mine), base = _short(eval_dir, bench), _correct(base_eval_dir.parent, bench)
    if set(mine) != set(base):
        raise UserError(f"{eval_dir}: its {bench} questions are not the base model's")

    def acc(ids: list[str], of: dict) -> float | None:
        return round(100.0 * mean(of[i] for i in ids), 1) if ids else None

    parts = {k: [i for i in mine if short[i] == (k == "short")] for k in ("short", "rest")}
    return {"n_short": len(parts["short"]), "n_rest": len(parts["rest"]),
            "acc_short": acc(parts["short"], mine), "base_acc_short": acc(parts["short"], base),
            "acc_rest": acc(parts["rest"], mine), "base_acc_rest": acc(parts["rest"], base)}


def _per_question(runs: list[Path], bench: str) -> dict[str, float]:
    """Each question's correctness averaged over seeds (the unit the bootstrap resamples)."""
    per = [_correct(r, bench) for r in runs]
    return {i: mean(p[i] for p in per) for i in set.intersection(*(set(p) for p in per))}


def _gpu_minutes(run_dir: Path, pool_job: dict) -> float:
    """Job wall time x GPUs: the pool's sampling, training and test evaluation (dev evals are the
    learning-rate search, reported apart)."""
    jobs = read_json(run_dir / "jobs.json") if (run_dir / "jobs.json").is_file() else {}
    total = sum(j["wall_s"] * j["gpus"] for name, j in jobs.items() if not name.startswith("dev:"))
    return round((total + pool_job.get("wall_s", 0) * pool_job.get("gpus", 0)) / 60, 2)


def _seed_entry(results: Path, run_dir: Path, method: str, seed: int) -> dict:
    summ = read_json(run_dir / "eval" / "summary.json")["benchmarks"]
    entry = {b: round(summ[b]["accuracy"], 2) for b in BENCHMARKS}
    entry["gsm8k_short"] = short_share(run_dir / "eval")
    stats = read_json(run_dir / "prep" / "stats.json") if method != "base" else {}
    pool = f"{POOL_OF.get(method, method)}-s{seed}" if method != "base" else None
    marker = results / "runs" / f"{pool}.sampled"  # the pool's job: its wall time and GPUs
    pool_job = read_json(marker) if pool and marker.is_file() else {}
    entry.update(sampling_tokens=stats.get("sampling_tokens", 0), tuning_tokens=stats.get("tuning_tokens", 0),
                 **_wall_times(run_dir), sampling_gpus=pool_job.get("gpus", 0),
                 gpu_minutes=_gpu_minutes(run_dir, pool_job))
    return entry


def _wall_times(run_dir: Path) -> dict[str, float]:
    """Seconds of the run's stages as their manifests and summaries record them: its pool's
    sampling, training (launch to saved, checked model) and test evaluation (decoding and grading
    both benchmarks). Engine starts are left out here; they count in the GPU minutes."""
    stages = read_json(run_dir / "run.json").get("stages", {})

    def wall(stage: str) -> float:
        f = run_dir / stages[stage] / "manifest.json" if stage in stages else None
        return round(read_json(f).get("wall_s", 0.0), 1) if f and f.is_file() else 0.0

    evals = [read_json(f).get("wall_s", 0.0) for f in sorted((run_dir / "eval").glob("*.summary.json"))]
    return {"sampling_s": wall("sample"), "training_s": wall("train"), "eval_s": round(sum(evals), 1)}


def _refused(run_dir: Path) -> bool:
    """The model check refused this run's training (a final verdict, see upft.campaign.refused)."""
    f = run_dir / "failed.json"
    return f.is_file() and read_json(f).get("final", False)


def summarise(results: Path, model: str, device: str, commands: list[str]) -> dict:
    """summary.json from a committed results folder (runs/<name>/...)."""
    c = Campaign(model="", data="", runs=results, results=results)  # for its learning-rate choice
    runs_root = results / "runs"
    base_dir = runs_root / run_name("base", None, 0)
    if not (base_dir / "eval" / "summary.json").is_file():
        raise UserError(f"{base_dir}: the base model's test run is missing")
    lr_choice = {m: {"dev_gsm8k": {lr: c.dev_accuracy(m, lr) for lr in (*LRS, EXTRA_LR)
                                   if (runs_root / run_name(m, lr, 0)).is_dir()},
                     "refused": sorted(lr for lr in (*LRS, EXTRA_LR) if _refused(runs_root / run_name(m, lr, 0))),
                     "dev_short": {lr: short_share(runs_root / run_name(m, lr, 0) / "eval-dev")
                                   for lr in (*LRS, EXTRA_LR)
                                   if (runs_root / run_name(m, lr, 0) / "eval-dev" / "gsm8k.correct.json").is_file()},
                     "chosen": c.lr_choice(m)} for m in METHODS if m != "base"}
    dev_base = runs_root / run_name("base", None, 0) / "eval-dev" / "summary.json"
    lr_choice["base_dev_gsm8k"] = read_json(dev_base)["benchmarks"]["gsm8k"]["accuracy"] if dev_base.is_file() else None
    methods, per_q, refused = {}, {}, {}
    for m in METHODS:
        lr = None if m == "base" else lr_choice[m]["chosen"]
        if m != "base" and lr is None:
            continue
        tried = sorted(runs_root.glob(f"{m}-{'lr' + lr + '-' if lr else ''}s*"))
        dirs = [d for d in tried if (d / "run.json").is_file()]
        no_model = {d.name.rsplit("-s", 1)[1]: read_json(d / "failed.json")["error"] for d in tried
                    if d not in dirs and _refused(d)}
        if no_model:  # never averaged away: a seed whose model was refused is listed with the method
            refused[m] = no_model
        if not dirs:
            continue
        seeds = {d.name.rsplit("-s", 1)[1]: _seed_entry(results, d, m, int(d.name.rsplit("-s", 1)[1])) for d in dirs}
        keys = [k for k in next(iter(seeds.values()))]
        mk = {"lr": float(lr) if lr else None, "seeds": seeds,
              "mean": {k: round(mean(s[k] for s in seeds.values()), 2) for k in keys},
              "std": {k: round(stdev(s[k] for s in seeds.values()), 2) if len(seeds) > 1 else None for k in keys}}
        per_q[m] = {b: _per_question(dirs, b) for b in BENCHMARKS}
        if m != "base":
            mk["paired_vs_base"] = {b: paired_bootstrap(per_q[m][b], per_q["base"][b]) for b in BENCHMARKS}
            mk["short_answers"] = {seed: short_answers(runs_root / f"{m}-lr{lr}-s{seed}" / "eval", base_dir / "eval")
                                   for seed in seeds}
        methods[m] = mk
    paired = {f"{a} vs {b}": {x: paired_bootstrap(per_q[a][x], per_q[b][x]) for x in BENCHMARKS}
              for a, b in PAIRS if a in per_q and b in per_q}
    summary = {"model": model, "device": device, "commands": commands, "lr_choice": lr_choice,
               "methods": methods, "paired": paired, "refused": refused}
    z3 = runs_root / "zero3" / "model" / "train_log.jsonl"
    one = runs_root / run_name(ZERO3_METHOD, lr_choice.get(ZERO3_METHOD, {}).get("chosen"), 0) / "model" / "train_log.jsonl"
    if z3.is_file() and one.is_file():
        check = compare_losses(one, z3)
        summary["zero3_check"] = {"method": ZERO3_METHOD, **{k: v for k, v in check.items() if k != "losses"},
                                  "loss_1gpu": check["losses"][0], "loss_2gpu_zero3": check["losses"][1]}
    return summary


LABELS = {"base": "base", "sft": "SFT", "upft_L16": "UPFT (L=16)", "upft_L32": "UPFT (L=32)", "rft": "RFT (n=8)",
          "label_filter": "Label Filter"}


def _pm(m: dict, key: str) -> str:
    mean_, std = m["mean"][key], m["std"][key]
    return f"{mean_:.1f}" + (f" ± {std:.1f}" if std is not None else "")


def tables(summary: dict) -> str:
    """Table 1 (accuracy, mean ± std over seeds, paired 95% interval vs base) and Table 2 (cost)."""
    ms = summary["methods"]
    head1 = ("| method | lr | seeds | GSM8K | vs base | MATH-500 | vs base | GSM8K answers ending within "
             f"{SHORT} tokens (%) |\n|---|---|---|---|---|---|---|---|\n")
    rows1 = []
    for name, m in ms.items():
        ci = m.get("paired_vs_base", {})
        cell = {b: f"[{ci[b][0]:+.1f}, {ci[b][1]:+.1f}]" if b in ci else "–" for b in BENCHMARKS}.get
        n = f"{len(m['seeds'])}" + (f" (+{len(summary['refused'][name])} refused)" if name in summary["refused"] else "")
        rows1.append(f"| {LABELS[name]} | {m['lr'] if m['lr'] else '–'} | {n} | {_pm(m, 'gsm8k')} | "
                     f"{cell('gsm8k')} | {_pm(m, 'math500')} | {cell('math500')} | {_pm(m, 'gsm8k_short')} |")
    head2 = ("| method | sampling tokens | tuning tokens | sampling (s) | training (s) | test eval (s) | GPU minutes |\n"
             "|---|---|---|---|---|---|---|\n")
    rows2 = [f"| {LABELS[n]} | {m['mean']['sampling_tokens'] / 1e6:.2f}M | {m['mean']['tuning_tokens'] / 1e6:.2f}M | "
             f"{m['mean']['sampling_s']:.0f}{_on(m['seeds'])} | {m['mean']['training_s']:.0f} | {m['mean']['eval_s']:.0f} | "
             f"{m['mean']['gpu_minutes']:.1f} |" for n, m in ms.items() if n != "base"]
    pairs = "".join(f"- {p}: GSM8K [{v['gsm8k'][0]:+.1f}, {v['gsm8k'][1]:+.1f}], "
                    f"MATH-500 [{v['math500'][0]:+.1f}, {v['math500'][1]:+.1f}]\n" for p, v in summary["paired"].items())
    return ("Table 1: accuracy (%), greedy; mean ± std over seeds; paired bootstrap 95% interval of the "
            "difference to the base model (points; an interval that excludes 0 is a difference beyond noise).\n\n"
            + head1 + "\n".join(rows1) + "\n"
            + "".join(f"\nShort answers, {LABELS[m]} seed {seed}: {d['n_short']} GSM8K answers end within {SHORT} "
                      f"tokens, {d['acc_short']}% right (the base model on those questions: {d['base_acc_short']}%)"
                      + (f"; on the other {d['n_rest']}: {d['acc_rest']}% (base {d['base_acc_rest']}%)"
                         if d["n_rest"] else "") + "\n"
                      for m, x in ms.items() for seed, d in x.get("short_answers", {}).items() if d["n_short"])
            + "".join(f"\nRefused by the model check, not in the mean: {LABELS[m]} seed {s}: {e}\n"
                      for m, seeds in summary["refused"].items() for s, e in seeds.items())
            + "\nTable 2: cost per run (mean over seeds): tokens decoded for the pool and trained on; wall "
              "time of the pool's sampling, the training and the test evaluation (engine starts apart); "
              "GPU minutes of its jobs, engine starts included.\n\n"
            + (head2 + "\n".join(rows2) + "\n" if rows2 else "(no tuned method has finished yet)\n")
            + (f"\nPaired intervals between methods:\n{pairs}" if pairs else "")
            + (_zero3_line(summary["zero3_check"]) if "zero3_check" in summary else ""))


def _on(seeds: dict) -> str:
    """The GPUs a pool ran on, where more than one (vLLM data parallel): its wall time needs them."""
    gpus = sorted({e["sampling_gpus"] for e in seeds.values()} - {0, 1})
    return f" (on {'/'.join(map(str, gpus))} GPUs)" if gpus else ""


def _zero3_line(z: dict) -> str:
    return (f"\nZeRO-3 check ({LABELS[z['method']]}, seed 0's training set at the chosen rate): 1 GPU (ZeRO-2) "
            f"{z['steps'][0]} steps, 2 GPUs (ZeRO-3) {z['steps'][1]} steps; per-step loss differs by "
            f"{z['mean_abs_diff']} on average, {z['max_abs_diff']} at most.\n")


def figure(summary: dict, path: Path) -> Path:
    """Accuracy against tuning tokens, one panel per benchmark, error bars = std over seeds."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(10, 4))
    for i, bench in enumerate(BENCHMARKS):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, m in summary["methods"].items():
            y, err = m["mean"][bench], m["std"][bench] or 0
            if name == "base":
                ax.axhline(y, ls="--", color="gray", label="base")
            else:
                ax.errorbar(max(m["mean"]["tuning_tokens"], 1), y, yerr=err, fmt="o", capsize=3, label=LABELS[name])
        ax.set(xscale="log", xlabel="tuning tokens", ylabel="accuracy (%)", title=bench)
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels (3x10^5, 4x10^5) run into each other
        ax.legend(fontsize=7)
    return write_png(path, fig)


def zero3_figure(summary: dict, path: Path) -> Path | None:
    """The 1-GPU and the 2-GPU ZeRO-3 loss curves of the same data, step by step; None before the check ran."""
    from matplotlib.figure import Figure

    z = summary.get("zero3_check")
    if not z:
        return None
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(range(1, len(z["loss_1gpu"]) + 1), z["loss_1gpu"], label="1 GPU, ZeRO-2")
    ax.plot(range(1, len(z["loss_2gpu_zero3"]) + 1), z["loss_2gpu_zero3"], "--", label="2 GPUs, ZeRO-3")
    ax.set(xlabel="step (global batch 64)", ylabel="training loss", title=f"OpenRLHF, {LABELS[z['method']]}")
    ax.legend()
    return write_png(path, fig)
