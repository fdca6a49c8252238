"""The report: tables equal the numbers in the run folders, figures are written, bad input is refused."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, stdev

import pytest

from conftest import run_cli
from upft.report import write_report
from upft.errors import UserError

BENCHES = ("gsm8k", "math500")
ENV = {"python": "3.11.9", "packages": {"torch": "2.13.0", "vllm": "0.9.9"},
       "hardware": {"cpu": "x86_64", "cpu_count": 16, "gpu": "NVIDIA H100 80GB HBM3", "gpu_count": 1}}


def _write(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def make_sample(root: Path, name: str, wall_s: float, tokens: int) -> Path:
    _write(root / name / "manifest.json", {"stage": "sample", "wall_s": wall_s, "sampling_tokens": tokens})
    return root / name


def make_run(root: Path, name: str, label: str, method: str, accs: tuple[float, float], seed: int = 0,
             L: int | None = None, p: float | None = None, sample: Path | None = None,
             stats: dict | None = None, train_wall: float | None = None) -> Path:
    """A finished run folder: run.json plus the stage files the report reads."""
    run = root / name
    stages = {"eval": "eval"}
    if sample is not None:
        stages["sample"] = f"../{sample.name}"
    if stats is not None:
        stages["prep"] = "prep"
        _write(run / "prep" / "stats.json", {"method": method, "n_rows": 100, **stats})
    if train_wall is not None:
        stages["train"] = "model"
        _write(run / "model" / "manifest.json", {"stage": "train", "wall_s": train_wall,
                                                 "model_check": {"passed": True}})
    benches = {b: {"accuracy": a, "ci95": [a - 2.5, a + 2.5], "n_questions": 500} for b, a in zip(BENCHES, accs)}
    _write(run / "eval" / "summary.json", {"model": name, "benchmarks": benches, "environment": ENV})
    _write(run / "run.json", {"name": name, "label": label, "method": method, "seed": seed, "L": L, "p": p,
                              "model": "qwen2.5-coder-1.5b-instruct", "stages": stages})
    return run


def _stats(sampling: int, tuning: int, length: float) -> dict:
    return {"sampling_tokens": sampling, "tuning_tokens": tuning, "mean_target_length": length}


# per-seed numbers of the fixture, checked against the tables below
UPFT = {  # (L, seed): (gsm8k, math500, tuning tokens, mean target length, train wall_s)
    (16, 0): (62.0, 31.0, 12_300, 16.9, 300.0), (16, 1): (63.5, 30.4, 12_500, 17.1, 330.0),
    (32, 0): (66.1, 33.8, 24_100, 32.7, 420.0), (32, 1): (64.9, 35.2, 24_500, 32.9, 450.0),
}
SFT, RFT, LF = (68.2, 36.0), (67.0, 35.5), (65.4, 34.1)


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    root = tmp_path / "runs"
    out = []
    for (L, seed), (g, m, tune, length, wall) in UPFT.items():
        sample = make_sample(root, f"samples-upft-L{L}-s{seed}", 120.0 + seed, 1_500_000)
        out.append(make_run(root, f"upft-L{L}-s{seed}", f"UPFT (L={L})", "upft", (g, m), seed, L, 0.1, sample,
                            _stats(1_500_000, tune, length), wall))
    out.insert(2, make_run(root, "base", "base", "base", (61.6, 30.2)))  # given mid-list, shown first
    shared = make_sample(root, "samples-shared", 1830.0, 36_900_000)
    sft_sample = make_sample(root, "samples-sft", 95.0, 3_300_000)
    out.append(make_run(root, "sft", "SFT", "sft", SFT, sample=sft_sample, stats=_stats(3_300_000, 3_200_000, 310.4),
                        train_wall=5400.0))
    out.append(make_run(root, "rft", "RFT", "rft", RFT, sample=shared, stats=_stats(36_900_000, 2_900_000, 290.0),
                        train_wall=4800.0))
    out.append(make_run(root, "lf", "Label Filter", "label_filter", LF, L=32, p=0.1, sample=shared,
                        stats=_stats(36_900_000, 200_000, 30.1), train_wall=600.0))
    return out


def table(md: str, title: str) -> dict[str, dict[str, str]]:
    """Rows of the markdown table under the heading starting with ``title``: label -> column -> cell."""
    section = md.split(f"## {title}")[1].split("## ")[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    head = cells[0]
    return {row[0]: dict(zip(head, row)) for row in cells[2:]}


def ms(xs: list[float]) -> str:
    return f"{mean(xs):.1f} ± {stdev(xs):.1f}"


def test_tables_equal_the_run_files(runs, tmp_path):
    files = write_report(runs, tmp_path / "rep", tmp_path / "figs")
    md = (tmp_path / "rep" / "report.md").read_text()
    t1, t2 = table(md, "Table 1"), table(md, "Table 2")
    assert list(t1) == ["base", "UPFT (L=16)", "UPFT (L=32)", "SFT", "RFT", "Label Filter"]
    assert t1["SFT"]["gsm8k"] == f"{SFT[0]:.1f}" and t1["RFT"]["math500"] == f"{RFT[1]:.1f}"
    assert t1["SFT"]["avg"] == f"{mean(SFT):.1f}" and t1["SFT"]["seeds"] == "1"
    l32 = [UPFT[(32, s)] for s in (0, 1)]
    assert t1["UPFT (L=32)"]["gsm8k"] == ms([x[0] for x in l32])
    assert t1["UPFT (L=32)"]["avg"] == ms([mean(x[:2]) for x in l32])
    assert t1["UPFT (L=32)"]["train len"] == f"{mean(x[3] for x in l32):.1f}"
    assert t1["UPFT (L=32)"]["seeds"] == "2"
    assert t1["base"]["train len"] == "-" and t1["base"]["gsm8k"] == "61.6"
    assert "base 95% CI: gsm8k 59.1-64.1 (500 questions), math500 27.7-32.7 (500 questions)" in md
    assert md.index("## Table 2") < md.index("## Table 1")  # costs lead: they are exact at any scale
    assert "one question is 0.2 points and the base model's 95% interval is 5 points wide" in md

    assert t2["RFT"]["sampling tokens"] == "36.9M" and t2["Label Filter"]["tuning tokens"] == "0.20M"
    assert t2["UPFT (L=16)"]["tuning tokens"] == "12.4K"  # mean of 12,300 and 12,500
    assert t2["RFT"]["sampling min"] == f"{1830.0 / 60:.1f}" == t2["Label Filter"]["sampling min"]
    assert t2["SFT"]["sampling tokens"] == "3.3M" and t2["SFT"]["sampling min"] == f"{95.0 / 60:.1f}"
    assert t2["base"]["sampling tokens"] == "-" and t2["base"]["training min"] == "-"
    assert t2["UPFT (L=32)"]["training min"] == f"{mean([420.0, 450.0]) / 60:.1f}"
    assert t2["UPFT (L=32)"]["avg"] == t1["UPFT (L=32)"]["avg"]
    assert "NVIDIA H100 80GB HBM3" in md and "torch 2.13.0" in md

    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    by_label = {s["label"]: s for s in rep["settings"]}
    assert by_label["UPFT (L=16)"]["tuning_tokens"] == 12_400
    assert by_label["RFT"]["sampling_tokens"] == 36_900_000
    assert by_label["UPFT (L=32)"]["avg"]["std"] == pytest.approx(stdev([mean(x[:2]) for x in l32]))

    figs = tmp_path / "figs"
    assert files == [tmp_path / "rep" / "report.md", tmp_path / "rep" / "report.json",
                     figs / "accuracy_vs_tuning_tokens.png", figs / "accuracy_vs_L.png"]
    for f in files[2:]:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (figs / "accuracy_vs_p.png").exists()  # all UPFT runs share p


def test_p_sweep_figure_when_p_varies(runs, tmp_path):
    sample = make_sample(tmp_path / "runs", "samples-p03", 200.0, 3_000_000)
    runs.append(make_run(tmp_path / "runs", "upft-p03", "UPFT (L=32, p=0.3)", "upft", (65.0, 34.0), 0, 32, 0.3,
                         sample, _stats(3_000_000, 90_000, 80.0), 500.0))
    files = write_report(runs, tmp_path / "rep", tmp_path / "figs", ["gsm8k"])
    names = [f.name for f in files[2:]]
    assert names == ["accuracy_vs_tuning_tokens.png", "accuracy_vs_L.png", "accuracy_vs_p.png"]
    assert all((tmp_path / "figs" / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    assert "math500" not in table((tmp_path / "rep" / "report.md").read_text(), "Table 1")["base"]


def test_a_parent_folder_stands_for_its_runs(runs, tmp_path):
    r = run_cli("eval/report.py", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    # figures land next to the report unless --figs says otherwise (never in the committed figs/)
    assert (tmp_path / "rep" / "accuracy_vs_tuning_tokens.png").is_file()
    assert list(table(r.stdout, "Table 1"))[0] == "base" and len(table(r.stdout, "Table 1")) == 6
    assert r.stdout == (tmp_path / "rep" / "report.md").read_text()


def test_missing_run_json(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: missing run.json"):
        write_report([tmp_path / "empty"], tmp_path / "rep", tmp_path / "figs")


def test_missing_stage_file_is_named(runs, tmp_path):
    (runs[-1] / "prep" / "stats.json").unlink()
    with pytest.raises(UserError, match=r"lf: missing prep/stats.json"):
        write_report(runs, tmp_path / "rep", tmp_path / "figs")
    assert not (tmp_path / "rep").exists()


def test_missing_benchmark_is_named(runs, tmp_path):
    with pytest.raises(UserError, match=r"eval/summary.json has no results for gpqa"):
        write_report(runs, tmp_path / "rep", tmp_path / "figs", ["gsm8k", "gpqa"])


def test_cli_reports_a_missing_stage_file_in_one_line(runs, tmp_path):
    (runs[0] / "model" / "manifest.json").unlink()
    r = run_cli("eval/report.py", *map(str, runs), "--out", str(tmp_path / "rep"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing model/manifest.json" in lines[0]


def test_a_model_without_a_passing_check_is_never_shown(runs, tmp_path):
    """A trained model must carry the trainers' health check (a collapsed run once reported 0% as a result)."""
    _write(runs[1] / "model" / "manifest.json", {"stage": "train", "wall_s": 1.0})
    with pytest.raises(UserError, match="records no passing model check"):
        write_report(runs, tmp_path / "rep", tmp_path / "figs")
    assert not (tmp_path / "rep").exists()


def test_report_reads_the_committed_gpu_runs(tmp_path):
    """The report command works over the run folders the GPU comparison committed."""
    runs = Path(__file__).resolve().parents[1] / "results" / "gpu" / "comparison" / "runs"
    files = write_report([runs], tmp_path / "rep", tmp_path / "figs")
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    base = next(s for s in report["settings"] if s["method"] == "base")
    assert base["accuracy"]["gsm8k"]["mean"] == pytest.approx(62.09, abs=0.01)
    assert all(f.exists() for f in files)
