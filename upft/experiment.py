"""One experiment config -> sample -> prep -> train -> eval, each stage skipped when done.

  bash scripts/run_experiment.sh configs/demo/upft.yaml [--runs-dir runs] [--set seed=1 ...]

A config (YAML) names the model, the method (base, upft, sft, rft, label_filter), the training
questions and one section per stage; ``defaults: other.yaml`` (or a list of files) pulls in
shared settings, later files and then the file's own keys winning. Paths inside a config are relative to the working directory, like every
path on our command lines.

Each stage fingerprints the settings and inputs that produce its output and skips itself when
its folder already holds that run; a changed setting reruns that stage and what depends on it
(the folder's old run is replaced). Samples live in ``RUNS/samples-<fingerprint>`` so methods
that share a sampling pool (RFT and Label Filter) decode it once; the fingerprint leaves out how
the pool is computed (batch size, GPUs), so a pool sampled on four GPUs serves runs on one.
``--until sample|prep|train`` stops a run after that stage (e.g. to train at several learning rates
and choose one on a dev split before any test evaluation). The run folder
``RUNS/<name>`` holds prep/, model/, eval/ and ``run.json``, which the report reads.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from upft import builders, openrlhf_launcher
from upft.backends import BACKEND_OPTIONS, Decoding, draw_options
from upft.data import QuestionSource
from upft.evaluate import EvalSettings, check_limits
from upft.openrlhf_launcher import OpenRLHFSettings
from upft.configs import read_config
from upft.errors import UserError, cli
from upft.manifests import fingerprint
from upft.runio import write_json
from upft.schema import check_types, keys
from upft.local_trainer import TrainSettings

METHODS = ("base", *builders.METHODS)  # "base": evaluate the model as it is
TOP = {"name", "label", "model", "method", "seed", "L", "p", "suffix", "keep_truncated", "defaults",
       "questions", "sample", "train", "eval"}
QUESTIONS = keys(QuestionSource)
SAMPLE = keys(Decoding) - {"seed"} | {"n"}  # the run's seed is the config's
LOCAL_TRAIN = keys(TrainSettings) - {"seed"}
OPENRLHF_TRAIN = keys(OpenRLHFSettings) - {"seed"}
EVAL = (keys(EvalSettings) - {"style", "max_new_tokens_by", "seed"} | keys(Decoding) - {"seed"}
        | {"benchmarks", "data_dir", "judge", "max_new_tokens_for"})


def _check_keys(path: Path, where: str, section: dict, known: set[str]) -> None:
    if not isinstance(section, dict):
        raise UserError(f"{path}: '{where}' must be a mapping")
    for key in section:
        if key not in known:
            raise UserError(f"{path}: unknown key '{where + '.' if where else ''}{key}' "
                            f"(known: {', '.join(sorted(known))})")


def _override(cfg: dict, item: str) -> None:
    """Apply one ``--set section.key=value`` (the value read as YAML: numbers, lists, true)."""
    from upft.configs import load_yaml

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"--set wants KEY=VALUE (e.g. eval.data_dir=../shared/data), got '{item}'")
    *parents, last = key.split(".")
    node = cfg
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {item}: '{part}' is not a section")
    node[last] = load_yaml(value, f"--set {item}")


def load_config(path: str, overrides: list[str] = ()) -> dict:
    """Read, merge, override and validate a config; returns it with defaults filled in."""
    p = Path(path)
    cfg = read_config(p)
    for item in overrides:
        _override(cfg, item)
    _check_keys(p, "", cfg, TOP)
    for key in ("model", "method", "eval"):
        if key not in cfg:
            raise UserError(f"{p}: missing required key '{key}'")
    if cfg["method"] not in METHODS:
        raise UserError(f"{p}: method must be one of {', '.join(METHODS)}, got '{cfg['method']}'")
    cfg.setdefault("seed", 0)
    cfg.setdefault("name", f"{p.stem}-s{cfg['seed']}")  # seeds of one setting get their own folders
    cfg.setdefault("L", 32)
    cfg.setdefault("p", 0.1)
    cfg.setdefault("suffix", True)
    cfg.setdefault("keep_truncated", False)  # full draws cut at the token limit stay out of training sets
    for key in ("questions", "sample", "train"):
        cfg.setdefault(key, {})
    if cfg["method"] != "base" and "source" not in cfg["questions"]:
        raise UserError(f"{p}: missing required key 'questions.source'")
    _check_keys(p, "questions", cfg["questions"], QUESTIONS)
    if cfg["method"] in ("rft", "label_filter") and not cfg["questions"].get("answer_field"):
        raise UserError(f"{p}: {cfg['method']} needs reference answers: set questions.answer_field")
    _check_keys(p, "sample", cfg["sample"], SAMPLE)
    trainer = cfg["train"].get("trainer", "local")
    if trainer not in ("local", "openrlhf"):
        raise UserError(f"{p}: train.trainer must be 'local' or 'openrlhf', got '{trainer}'")
    _check_keys(p, "train", cfg["train"], (LOCAL_TRAIN if trainer == "local" else OPENRLHF_TRAIN) | {"trainer"})
    _check_keys(p, "eval", cfg["eval"], EVAL)
    if "benchmarks" not in cfg["eval"]:
        raise UserError(f"{p}: missing required key 'eval.benchmarks'")
    _check_values(p, cfg)
    return cfg


def _number(v, whole: bool) -> bool:
    return not isinstance(v, bool) and isinstance(v, int if whole else (int, float))


def _check_values(path: Path, cfg: dict) -> None:
    """Types and ranges of the values a run needs, so a bad one stops every config before any runs."""
    for key, ok, want in (("L", lambda v: _number(v, True) and v >= 1, "a whole number >= 1"),
                          ("p", lambda v: _number(v, False) and 0 <= v <= 1, "a number in [0, 1]"),
                          ("seed", lambda v: _number(v, True) and v >= 0, "a whole number >= 0")):
        if not ok(cfg[key]):
            raise UserError(f"{path}: {key} must be {want}, got {cfg[key]!r}")
    try:
        if cfg["method"] != "base":
            check_types(q := QuestionSource(**cfg["questions"]), "questions")
            if q.limit is not None and q.limit < 1:
                raise UserError(f"questions.limit must be at least 1, got {q.limit}")
        train_settings(cfg).check()
        for section in ("sample", "eval"):
            Decoding(**{k: v for k, v in cfg[section].items() if k in keys(Decoding)}).check(section)
        if not cfg["eval"]["benchmarks"]:
            raise UserError("eval.benchmarks is empty")
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def train_settings(cfg: dict) -> TrainSettings | OpenRLHFSettings:
    """The config's training settings, for the trainer it names (the run's seed included)."""
    t = {k: v for k, v in cfg["train"].items() if k != "trainer"}
    schema = TrainSettings if cfg["train"].get("trainer", "local") == "local" else OpenRLHFSettings
    return schema(**t, seed=cfg["seed"])


def default_label(cfg: dict) -> str:
    m, L, n = cfg["method"], cfg["L"], cfg["sample"].get("n", 16)
    return {"base": "base", "upft": f"UPFT (L={L})", "sft": "SFT", "rft": f"RFT (n={n})",
            "label_filter": f"Label Filter (L={L})"}[m]


def sample_settings(cfg: dict) -> dict:
    """Arguments of run_sample for a method: UPFT decodes prefixes, the baselines full responses."""
    method, s = cfg["method"], dict(cfg["sample"])
    mode = "upft" if method == "upft" else "full"
    n = s.pop("n", 16 if method in ("rft", "label_filter") else 1)
    if method in ("upft", "sft") and n != 1:
        raise UserError(f"{method} uses one sample per question; sample.n must be 1")
    q = cfg["questions"]
    prefix = {"L": cfg["L"], "p": cfg["p"]} if mode == "upft" else {}  # a full pool is shared across L and p
    return {"model": cfg["model"], "questions": QuestionSource(**q), "mode": mode, "n": n, **prefix,
            "seed": cfg["seed"], **s}


STAGES = ("sample", "prep", "train", "eval")


def pool_dir(cfg: dict, runs: Path) -> Path:
    """Where a config's samples live: named by what was sampled, not how (batch size, GPUs)."""
    drawn = sample_settings(cfg)
    backend = drawn.get("backend", Decoding.backend)
    pool = {k: v for k, v in drawn.items() if k not in BACKEND_OPTIONS} | draw_options(backend, drawn)
    return runs / f"samples-{fingerprint(pool)[:12]}"


def run(config: str, runs_dir: str = "runs", overrides: list[str] = (), until: str = "eval") -> Path:
    """Run one config through its stages, up to and including ``until``; returns the run folder."""
    from upft.stages import run_eval, run_prep, run_sample

    cfg = load_config(config, overrides)
    runs = Path(runs_dir)
    run_dir = runs / cfg["name"]
    stages: dict[str, str] = {}
    model = cfg["model"]
    if cfg["method"] != "base":
        sargs = sample_settings(cfg)
        samples = pool_dir(cfg, runs)
        print(f"[experiment] {cfg['name']}: sample -> {samples}", file=sys.stderr)
        run_sample(out=str(samples), force=True, **sargs)
        if until == "sample":
            return run_dir
        prep = run_dir / "prep"
        run_prep(str(samples), str(prep), method=cfg["method"], L=cfg["L"], p=cfg["p"], suffix=cfg["suffix"],
                 seed=cfg["seed"], keep_truncated=cfg["keep_truncated"], force=True)
        if until == "prep":
            return run_dir
        model_dir = run_dir / "model"
        _train(cfg, prep, model_dir)
        if until == "train":
            return run_dir
        stages.update(sample=f"../{samples.name}", prep="prep", train="model")
        model = str(model_dir)
    e = dict(cfg["eval"])
    bench = e.pop("benchmarks")
    common = {k: e.pop(k) for k in ("data_dir", "prompt_style", "backend", "judge", *BACKEND_OPTIONS) if k in e}
    limits = check_limits(e.pop("max_new_tokens_for", {}))
    settings = EvalSettings(**e, max_new_tokens_by=limits, seed=cfg["seed"])  # the seed of sampled avg@n
    label = cfg.get("label") or default_label(cfg)
    run_eval(model, str(run_dir / "eval"), bench, settings, label=label, force=True, **common)
    stages["eval"] = "eval"
    write_json(run_dir / "run.json", {
        "name": cfg["name"], "label": label, "method": cfg["method"], "seed": cfg["seed"],
        "L": cfg["L"] if cfg["method"] in ("upft", "label_filter") else None,
        "p": cfg["p"] if cfg["method"] in ("upft", "label_filter") else None,
        "model": cfg["model"], "stages": stages, "config": cfg})
    return run_dir


def _train(cfg: dict, prep: Path, out: Path) -> None:
    from upft.stages import run_train

    settings = train_settings(cfg)
    if isinstance(settings, TrainSettings):
        run_train(str(prep), cfg["model"], str(out), settings, force=True)
    else:
        openrlhf_launcher.train(openrlhf_launcher.Job(str(prep), cfg["model"], str(out), settings, force=True))


def main(argv: list[str] | None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="+", help="experiment YAML files, run in order")
    ap.add_argument("--runs-dir", default="runs")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value in every config, e.g. --set seed=1 --set eval.data_dir=../shared/data")
    ap.add_argument("--until", choices=STAGES, default="eval", help="the last stage to run")
    a = ap.parse_args(argv)
    for path in a.configs:
        load_config(path, a.set)  # all configs are checked before the first one runs
    for path in a.configs:
        print(f"[experiment] done: {run(path, a.runs_dir, a.set, a.until)}", file=sys.stderr)


def entry() -> None:
    """The console entry point (``upft-experiment``)."""
    cli(main)


if __name__ == "__main__":
    entry()
