"""The four pipeline stages as functions: sample, prep, train, evaluate.

Each one validates its input before writing anything, skips itself when its output folder
already holds a run of the same settings, and writes a manifest next to its outputs. The
entry points (sample/generate.py, data_prep/build.py, train/train_local.py, eval/run_eval.py)
only parse arguments and call these.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

from upft import builders
from upft.data import BENCHMARKS, QuestionSource, load_benchmark
from upft.evaluate import EvalSettings, check_golds, evaluate
from upft.backends import draw_options, make_backend, used_options
from upft.grading import Grader, unparsable_golds
from upft.judge import Judge
from upft.models import end_of_turn_id, load_tokenizer, resolve_model, sampling_defaults
from upft.prompts import style_for
from upft.errors import UserError
from upft.manifests import abandon_stage, begin_stage, write_manifest
from upft.runio import JsonlAppender, read_json, read_jsonl, sha256_file, write_json, write_jsonl
from upft.sampling import sample
from upft.local_trainer import TrainSettings, train


def _skip(out: Path, settings: dict, outputs: list[str], force: bool) -> bool:
    if begin_stage(out, settings, outputs, force):
        print(f"[skip] {out} already holds this run", file=sys.stderr)
        return True
    return False


def _model_style(model: str, model_path: str, prompt_style: str) -> str:
    """The prompt style: the one asked for, else the one a tuned model was trained with (its
    training manifest records it, carried from sampling), else the paper's choice for the family
    named in ``model``. A folder name never overrides what the data recorded."""
    recorded = recorded_style(Path(model_path))
    return style_for(model, prompt_style) if prompt_style != "auto" or not recorded else recorded


def _top_p_k(model_path: str, top_p: float | None, top_k: int | None) -> tuple[float, int]:
    """Explicit values win; unset ones come from the model's generation config (see sampling_defaults)."""
    model_defaults = sampling_defaults(model_path) if top_p is None or top_k is None else {}
    top_p = model_defaults["top_p"] if top_p is None else top_p
    top_k = model_defaults["top_k"] if top_k is None else top_k
    if not 0 < top_p <= 1 or top_k < 0:
        raise UserError(f"top-p must be in (0, 1] and top-k >= 0, got {top_p} and {top_k}")
    return top_p, top_k


def recorded_style(stage_dir: Path) -> str | None:
    """The prompt style an earlier stage recorded in its manifest (None for old runs)."""
    man = stage_dir / "manifest.json"
    return read_json(man).get("settings", {}).get("style") if man.is_file() else None


def _stage_input(path: str, name: str) -> tuple[Path, list[dict]]:
    """The rows of an earlier stage's output: the file itself, or ``name`` inside its folder."""
    p = Path(path)
    if p.is_dir():
        p = p / name
    if not p.is_file():
        raise UserError(f"{name} not found: {p}")
    rows = read_jsonl(p)
    if not rows:
        raise UserError(f"{p}: no rows")
    return p, rows


def _backend(name: str, model_path: str, tokenizer, **options):
    """A generation backend stopping on the end-of-turn and eos tokens; ``options`` are its CLI flags."""
    stop = sorted({end_of_turn_id(tokenizer), tokenizer.eos_token_id})
    return make_backend(name, model_path, tokenizer, stop, **options)


def run_sample(model: str, questions: QuestionSource, out: str, *, mode: str = "upft", L: int = 32, p: float = 0.1,
               n: int = 1, max_new_tokens: int = 1024, temperature: float = 0.6, top_p: float | None = None,
               top_k: int | None = None, seed: int = 0, prompt_style: str = "auto", backend: str = "transformers",
               gguf_sha256: str | None = None, engine_seed: bool = False, force: bool = False,
               **backend_options) -> Path:
    """Sample training responses into ``out/samples.jsonl``."""
    if L <= 0:
        raise UserError(f"L must be a positive number of tokens, got {L}")
    if not 0.0 <= p <= 1.0:
        raise UserError(f"p must be in [0, 1], got {p}")
    qs = questions.load()
    model_path = resolve_model(model, gguf_sha256)
    style = _model_style(model, model_path, prompt_style)
    top_p, top_k = _top_p_k(model_path, top_p, top_k)
    upft = mode == "upft"  # a full-length pool does not depend on L or p: methods with any L share it
    settings = {"model": model_path, "questions": asdict(questions), "n_questions": len(qs),
                "mode": mode, "L": L if upft else None, "p": p if upft else None, "n": n,
                "max_new_tokens": max_new_tokens,
                "temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": seed, "style": style,
                "backend": backend}
    if engine_seed and backend == "vllm":  # recorded only when on, so pools drawn before the option stay valid
        settings["engine_seed"] = True
    settings.update(draw_options(backend, backend_options))
    outdir = Path(out)
    if _skip(outdir, settings, ["samples.jsonl"], force):
        return outdir
    tok = load_tokenizer(model_path)
    t_start = time.time()
    gen = _backend(backend, model_path, tok, engine_seed=engine_seed, **backend_options)
    start_s = time.time() - t_start  # model load (and a vLLM engine's compile and warm-up), apart from decoding
    prior_s = JsonlAppender(outdir / "samples.jsonl").prior_s  # time of killed earlier runs of this job
    t0 = time.time()
    records = sample(qs, tok, gen, str(outdir / "samples.jsonl"), mode=mode, L=L, p=p, n=n,
                     max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                     seed=seed, style=style)
    write_manifest(outdir, "sample", settings, n_records=len(records), wall_s=prior_s + time.time() - t0,
                   backend_start_s=start_s, sampling_tokens=sum(r["n_tokens"] for r in records),
                   backend_options=used_options(backend_options))  # how it ran (batch size...), not what it drew
    return outdir


def grade_samples(samples: list[dict]) -> list[bool]:
    """Correctness of each sample against its question's reference answer (math-verify)."""
    with Grader() as grader:
        return [g["correct"] for g in grader.grade([("math", s["response"], s["answer"]) for s in samples])]


def run_prep(samples: str, out: str, *, method: str = "upft", L: int | None = None, p: float = 0.1,
             suffix: bool = True, seed: int = 0, model: str | None = None, keep_truncated: bool = False,
             allow_unparsed_gold: bool = False, force: bool = False) -> Path:
    """Build a training set (``out/train.jsonl`` + ``out/stats.json``) from a samples file.

    L defaults to the L the prefixes were sampled with (the sample manifest records it; 32 for a
    full-length pool), and a longer L than was sampled is refused: those tokens were never decoded.
    ``p`` and ``seed`` matter to Label Filter (its full fraction) and RFT (which correct sample);
    UPFT's full fraction was already drawn at sampling time.
    """
    if method not in builders.METHODS:
        raise UserError(f"unknown method '{method}' (known: {', '.join(builders.METHODS)})")
    spath, rows = _stage_input(samples, "samples.jsonl")
    if method in ("rft", "label_filter") and any(s.get("answer") is None for s in rows):
        raise UserError(f"{method} needs reference answers: sample with --answer-field set")
    if method in ("rft", "label_filter") and not allow_unparsed_gold:
        bad = unparsable_golds([s["answer"] for s in rows])
        if bad:
            raise UserError(f"{len(bad)} of {len(rows)} samples have a reference answer math-verify cannot parse "
                            f"(first: {rows[bad[0]]['answer']!r}); {method} would drop their questions. Fix the "
                            "data, or pass --allow-unparsed-gold")
    man = spath.parent / "manifest.json"
    sampled = read_json(man)["settings"] if man.is_file() else {}
    prefixes_sampled = sampled.get("L") if sampled.get("mode") == "upft" else None
    L = L if L is not None else prefixes_sampled or 32
    if L < 1:
        raise UserError(f"L must be a positive number of tokens, got {L}")
    if prefixes_sampled is not None and L > prefixes_sampled:
        raise UserError(f"L={L} is longer than the {prefixes_sampled} tokens sampled per prefix in {spath}; "
                        f"sample again with --L {L}, or prep with --L {prefixes_sampled} or less")
    if model is None:
        if not sampled:
            raise UserError(f"no manifest next to {spath}; pass --model")
        model_path = sampled["model"]
    else:
        model_path = resolve_model(model)
    settings = {"samples_sha256": sha256_file(spath), "method": method, "L": L, "suffix": suffix,
                "model": model_path, "style": recorded_style(spath.parent), "keep_truncated": keep_truncated}
    if method in ("rft", "label_filter"):
        settings.update(seed=seed, p=p if method == "label_filter" else None)
    outdir = Path(out)
    if _skip(outdir, settings, ["train.jsonl", "stats.json"], force):
        return outdir
    tok = load_tokenizer(model_path)
    eot = end_of_turn_id(tok)
    extra = {}
    if method == "upft":
        train_rows, dropped = builders.build_upft(rows, tok, eot, L, suffix, keep_truncated)
    elif method == "sft":
        train_rows, dropped = builders.build_sft(rows, tok, eot, keep_truncated)
    else:
        correct = grade_samples(rows)
        extra = {"n_correct_samples": sum(correct),
                 "n_questions_without_correct": len({s["id"] for s in rows})
                 - len({s["id"] for s, ok in zip(rows, correct) if ok})}
        if method == "rft":
            train_rows, dropped = builders.build_rft(rows, correct, tok, eot, seed, keep_truncated)
        else:
            train_rows, dropped = builders.build_label_filter(rows, correct, tok, eot, L, p, seed, suffix,
                                                              keep_truncated)
    write_jsonl(outdir / "train.jsonl", train_rows)
    truncated = sum(s["draw"] == "full" and s["finish_reason"] == "length" for s in rows)
    write_json(outdir / "stats.json", {**builders.stats(method, rows, train_rows, dropped), **extra, "L": L,
                                       "n_truncated_full_draws": truncated, "keep_truncated": keep_truncated})
    write_manifest(outdir, "prep", settings)
    return outdir


def run_train(data: str, model: str, out: str, settings: TrainSettings, force: bool = False) -> Path:
    """Fine-tune ``model`` on a prepared ``train.jsonl``; writes a plain HF folder to ``out``."""
    dpath, rows = _stage_input(data, "train.jsonl")
    model_path = resolve_model(model)
    fp = {"data_sha256": sha256_file(dpath), "model": model_path, "style": recorded_style(dpath.parent),
          **vars(settings)}
    outdir = Path(out)
    if _skip(outdir, fp, ["config.json"], force):
        return outdir
    try:
        train(rows, model_path, out, settings, fp)
    except UserError:
        abandon_stage(outdir)
        raise
    return outdir


def run_eval(model: str, out: str, benchmarks: list[str], settings: EvalSettings, *, data_dir: str | None = None,
             prompt_style: str = "auto", backend: str = "transformers", label: str | None = None,
             judge: str | None = None, force: bool = False, **backend_options) -> dict:
    """Evaluate a model on benchmarks; writes per-question rows, summaries and a markdown table.

    ``judge`` (a model spec) grades open-answer benchmarks (gpqa_open) as the paper did.
    """
    settings.check()
    if not benchmarks:
        raise UserError("no benchmarks given (e.g. --benchmarks gsm8k,math500)")
    for b in benchmarks:  # fail on a bad name, a missing mirror file or unreadable golds before anything runs
        check_golds(b, load_benchmark(b, data_dir, settings.limit, settings.shuffle_seed), settings.allow_unparsed_gold)
    model_path = resolve_model(model)
    judge_path = resolve_model(judge) if judge else None
    settings.style = _model_style(model, model_path, prompt_style)
    settings.top_p, settings.top_k = _top_p_k(model_path, settings.top_p, settings.top_k)
    # a retrained model in the same folder is a different model: its training manifest says so
    man = Path(model_path) / "manifest.json"
    fp = {"model": model_path, "model_run": read_json(man).get("fingerprint") if man.is_file() else None,
          "benchmarks": benchmarks, "data_dir": data_dir, "judge": judge_path, **vars(settings),
          **draw_options(backend, backend_options)}
    outdir = Path(out)
    if _skip(outdir, fp, ["summary.json"], force):
        return read_json(outdir / "summary.json")
    tok = load_tokenizer(model_path)
    t_start = time.time()
    gen = _backend(backend, model_path, tok, engine_seed=settings.engine_seed, **backend_options)
    start_s = time.time() - t_start
    grader = None
    if judge_path and any(BENCHMARKS[b].kind == "open" for b in benchmarks):
        judge_tok = load_tokenizer(judge_path)
        grader = Judge(judge, judge_tok, _backend(backend, judge_path, judge_tok, **backend_options))
    summary = evaluate(label or model, benchmarks, tok, gen, out, settings, data_dir, grader)
    write_manifest(outdir, "eval", fp, backend_start_s=start_s, backend_options=used_options(backend_options))
    return summary
