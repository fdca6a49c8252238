"""Experiment report: finished runs -> the paper's Tables 1-2, figures, and the numbers as JSON.

A run folder holds ``run.json`` (name, label, method, seed, L, p, stages); runs sharing a label
are seeds of one setting and are shown as mean ± sample std over seeds. Every number comes from
the stage outputs themselves (eval summary, prep stats, stage manifests), so a table can always
be traced back to the files that produced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, stdev

from matplotlib.figure import Figure

from upft.experiment import METHODS
from upft.errors import UserError
from upft.runio import read_json, write_json, write_png, write_text

STYLE = {"upft": ("o", "tab:red"), "sft": ("s", "tab:blue"), "rft": ("^", "tab:green"),
         "label_filter": ("D", "tab:purple")}


@dataclass
class Run:
    """One finished run, reduced to what the report shows."""
    path: Path
    label: str
    method: str
    seed: int | None
    L: int | None
    p: float | None
    eval_file: str  # relative to path, for error messages
    eval: dict
    stats: dict | None  # prep/stats.json; None for the base model
    sample_min: float | None
    train_min: float | None

    def avg(self, benchmarks: list[str]) -> float:
        return mean(self.eval["benchmarks"][b]["accuracy"] for b in benchmarks)


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders in the order given; a folder without run.json stands for its run subfolders."""
    runs = []
    for p in map(Path, paths):
        if (p / "run.json").is_file():
            runs.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if (d / "run.json").is_file()) if p.is_dir() else []
        if not subs:
            raise UserError(f"{p}: missing run.json (and no subfolder holds one)")
        runs.extend(subs)
    return runs


def _read(run_dir: Path, rel: str) -> dict:
    path = run_dir / rel
    if not path.is_file():
        raise UserError(f"{run_dir}: missing {rel}")
    try:
        return read_json(path)
    except json.JSONDecodeError:
        raise UserError(f"{run_dir}: {rel} is not valid JSON")


def load_run(run_dir: str | Path) -> Run:
    """Read run.json and the files of each stage it names; a named stage must have its file."""
    run_dir = Path(run_dir)
    meta = _read(run_dir, "run.json")
    stages = meta.get("stages") or {}
    if meta.get("method") not in METHODS:
        raise UserError(f"{run_dir}/run.json: 'method' must be one of {', '.join(METHODS)}")
    if "label" not in meta or "eval" not in stages:
        raise UserError(f"{run_dir}/run.json: needs 'label' and 'stages.eval'")
    stage = {s: f"{stages[s].rstrip('/')}/{f}" for s, f in
             (("sample", "manifest.json"), ("prep", "stats.json"), ("train", "manifest.json"),
              ("eval", "summary.json")) if s in stages}
    ev = _read(run_dir, stage["eval"])
    if not isinstance(ev.get("benchmarks"), dict):
        raise UserError(f"{run_dir}: {stage['eval']} is not an eval summary (no 'benchmarks')")
    manifests = {s: _read(run_dir, stage[s]) for s in ("sample", "train") if s in stage}
    if "train" in manifests and not (manifests["train"].get("model_check") or {}).get("passed"):
        # a collapsed model ("!!!!", 0%) must never appear as a result (upft.health)
        raise UserError(f"{run_dir}: {stage['train']} records no passing model check; "
                        "retrain it (the trainers check every model they write)")
    wall = {s: manifests[s].get("wall_s") if s in manifests else None for s in ("sample", "train")}
    return Run(run_dir, meta["label"], meta["method"], meta.get("seed"), meta.get("L"), meta.get("p"),
               stage["eval"], ev, _read(run_dir, stage["prep"]) if "prep" in stage else None,
               sample_min=None if wall["sample"] is None else wall["sample"] / 60,
               train_min=None if wall["train"] is None else wall["train"] / 60)


def _spread(xs: list[float]) -> dict:
    """Mean and sample std over seeds (std only from two seeds on)."""
    return {"mean": mean(xs), "std": stdev(xs) if len(xs) > 1 else None}


def _mean_of(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return mean(present) if present else None


def _stat(runs: list[Run], key: str) -> float | None:
    """Mean over seeds of a prep statistic (None for the base model, which has no prep)."""
    return _mean_of([r.stats.get(key) if r.stats else None for r in runs])


def aggregate(runs: list[Run], benchmarks: list[str]) -> dict:
    """Group runs by label (base first, then first appearance) into the numbers the tables show."""
    for r in runs:
        missing = [b for b in benchmarks if b not in r.eval["benchmarks"]]
        if missing:
            raise UserError(f"{r.path}: {r.eval_file} has no results for {', '.join(missing)}")
    groups: dict[str, list[Run]] = {}
    for r in sorted(runs, key=lambda r: r.method != "base"):  # stable: keeps the given order otherwise
        groups.setdefault(r.label, []).append(r)
    settings = []
    for label, rs in groups.items():
        seeds = [r.seed for r in rs if r.seed is not None]
        if len(set(seeds)) < len(seeds):
            raise UserError(f"setting '{label}': a seed is given twice ({', '.join(str(r.path) for r in rs)})")
        settings.append({
            "label": label, "method": rs[0].method, "L": rs[0].L, "p": rs[0].p, "seeds": len(rs),
            "runs": [{"path": str(r.path), "seed": r.seed, "avg": r.avg(benchmarks)} for r in rs],
            "accuracy": {b: _spread([r.eval["benchmarks"][b]["accuracy"] for r in rs]) for b in benchmarks},
            "avg": _spread([r.avg(benchmarks) for r in rs]),
            "train_len": _stat(rs, "mean_target_length"),
            "sampling_tokens": _stat(rs, "sampling_tokens"), "tuning_tokens": _stat(rs, "tuning_tokens"),
            "sampling_min": _mean_of([r.sample_min for r in rs]),
            "training_min": _mean_of([r.train_min for r in rs]),
        })
    base = next((r for r in runs if r.method == "base"), None)
    return {"benchmarks": benchmarks, "settings": settings,
            "base_ci95": {b: base.eval["benchmarks"][b].get("ci95") for b in benchmarks} if base else None,
            "base_questions": {b: base.eval["benchmarks"][b].get("n_questions") for b in benchmarks} if base else None,
            "environment": runs[0].eval.get("environment", {})}


def _acc(s: dict) -> str:
    return f"{s['mean']:.1f}" if s["std"] is None else f"{s['mean']:.1f} ± {s['std']:.1f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def _tokens(x: float | None) -> str:
    """Paper style (36.9M, 0.20M, 12.3K), with a second decimal below 1M so 0.12M and 0.16M differ."""
    if x is None:
        return "-"
    if x >= 1e5:
        return f"{x / 1e6:.1f}M" if x >= 1e6 else f"{x / 1e6:.2f}M"
    return f"{x / 1e3:.1f}K" if x >= 1e3 else f"{x:.0f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def render_markdown(report: dict) -> str:
    """report.md: Table 2 (cost), Table 1 (accuracy, with the base model's interval and what it
    means), and the hardware/versions line."""
    bs, ss = report["benchmarks"], report["settings"]
    t1 = _table(["setting", *bs, "avg", "train len", "seeds"],
                [[s["label"], *(_acc(s["accuracy"][b]) for b in bs), _acc(s["avg"]), _num(s["train_len"]),
                  str(s["seeds"])] for s in ss])
    if report["base_ci95"]:
        n = report.get("base_questions") or {}
        t1 += "\nbase 95% CI: " + ", ".join(
            (f"{b} {ci[0]:.1f}-{ci[1]:.1f}" + (f" ({n[b]} questions)" if n.get(b) else "")) if ci else f"{b} -"
            for b, ci in report["base_ci95"].items()) + "\n"
        widths = {b: (ci[1] - ci[0], n.get(b)) for b, ci in report["base_ci95"].items() if ci and n.get(b)}
        if widths:
            b, (width, count) = max(widths.items(), key=lambda kv: kv[1][0])
            t1 += (f"\nOn {b} one question is {100 / count:.1f} points and the base model's 95% interval is "
                   f"{width:.0f} points wide: a difference between settings much smaller than that is noise "
                   "(on a few questions, only the costs above are results).\n")
    t2 = _table(["setting", "avg", "sampling tokens", "tuning tokens", "sampling min", "training min",
                 "seeds"],
                [[s["label"], _acc(s["avg"]), _tokens(s["sampling_tokens"]), _tokens(s["tuning_tokens"]),
                  _num(s["sampling_min"]), _num(s["training_min"]), str(s["seeds"])] for s in ss])
    env = report["environment"]
    hw = env.get("hardware", {})
    device = (f"{hw['gpu']} x{hw.get('gpu_count', 1)}" if hw.get("gpu")
              else f"{hw.get('cpu') or 'unknown'} (CPU)")
    pkgs = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items()) or "unknown"
    # costs first: measured exactly at any scale, where accuracy on few questions is mostly noise
    return (f"## Table 2: cost (tokens, and wall minutes on the hardware below: mean over seeds)\n\n{t2}\n"
            f"## Table 1: accuracy (%), mean ± std over seeds\n\n{t1}\n"
            f"Hardware: {device}; python {env.get('python', '?')}; packages: {pkgs} (first run's eval)\n")


def _accuracy_vs_tokens(settings: list[dict], path: Path) -> Path:
    """Figure 1b of the paper: avg accuracy against tuning tokens, one marker per method."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    seen = set()
    for s in settings:
        y, err = s["avg"]["mean"], s["avg"]["std"]
        if s["method"] == "base":
            ax.axhline(y, ls="--", color="gray", label=s["label"])
        elif s["tuning_tokens"] is not None:
            marker, colour = STYLE[s["method"]]
            ax.errorbar(s["tuning_tokens"], y, yerr=err, fmt=marker, color=colour, capsize=3,
                        label=None if s["method"] in seen else s["method"])
            ax.annotate(s["label"], (s["tuning_tokens"], y), textcoords="offset points", xytext=(5, 5),
                        fontsize=8)
            seen.add(s["method"])
    ax.set(xscale="log", xlabel="tuning tokens", ylabel="avg accuracy (%)")
    ax.legend(fontsize=8)
    return write_png(path, fig)


def _sweep(runs: list[Run], benchmarks: list[str], knob: str, other: str, path: Path) -> Path:
    """UPFT avg accuracy against L (or p), mean ± std over seeds, one line per value of the other knob."""
    lines: dict = {}
    for r in runs:
        lines.setdefault(getattr(r, other), {}).setdefault(getattr(r, knob), []).append(r.avg(benchmarks))
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for o, by_x in sorted(lines.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        xs = sorted(by_x)
        ax.errorbar(xs, [mean(by_x[x]) for x in xs], yerr=[_spread(by_x[x])["std"] or 0 for x in xs],
                    fmt="o-", capsize=3, label=f"{other}={o}")
    if knob == "L":  # L is swept in doublings
        ax.set_xscale("log", base=2)
    ticks = sorted({getattr(r, knob) for r in runs})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set(xlabel=knob, ylabel="avg accuracy (%)", title=f"UPFT: accuracy vs {knob}")
    ax.legend(fontsize=8)
    return write_png(path, fig)


def write_figures(report: dict, runs: list[Run], figs_dir: str | Path) -> list[Path]:
    """The tokens figure always; the L and p sweeps only where UPFT runs vary that knob."""
    figs = Path(figs_dir)
    figs.mkdir(parents=True, exist_ok=True)
    written = [_accuracy_vs_tokens(report["settings"], figs / "accuracy_vs_tuning_tokens.png")]
    upft = [r for r in runs if r.method == "upft"]
    for knob, other in (("L", "p"), ("p", "L")):
        if len({getattr(r, knob) for r in upft if getattr(r, knob) is not None}) >= 2:
            written.append(_sweep([r for r in upft if getattr(r, knob) is not None], report["benchmarks"],
                                  knob, other, figs / f"accuracy_vs_{knob}.png"))
    return written


def write_report(run_dirs: list[str | Path], out_dir: str | Path, figs_dir: str | Path,
                 benchmarks: list[str] | None = None) -> list[Path]:
    """Write OUT/report.md, OUT/report.json and the figures; return the files written."""
    runs = [load_run(d) for d in find_runs(run_dirs)]
    if not runs:
        raise UserError("no run folders given")
    report = aggregate(runs, benchmarks or list(runs[0].eval["benchmarks"]))
    out = Path(out_dir)
    write_text(out / "report.md", render_markdown(report))
    write_json(out / "report.json", report)
    return [out / "report.md", out / "report.json", *write_figures(report, runs, figs_dir)]
