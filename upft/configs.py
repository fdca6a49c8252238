"""YAML configs: numbers in any notation, ``defaults:`` files merged in order, one-line errors."""

from __future__ import annotations

import functools
from pathlib import Path

from upft.errors import UserError


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@functools.cache
def yaml_loader():
    """PyYAML's safe loader, reading numbers in any notation as numbers: YAML 1.1 takes '1e-5'
    (no dot) for a string, so ``lr: 1e-5`` failed only after sampling and prep had run."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:\d[\d_]*)?\.?\d*[eE][-+]?\d+$"), list("-+0123456789."))
    return Loader


def load_yaml(text: str, where: str):
    """Parse YAML text; a syntax error is one line naming the file."""
    import yaml

    try:
        return yaml.load(text, Loader=yaml_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{where}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None


def read_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A YAML config; ``defaults: file`` (or a list) merges shared files first, the file's own keys last."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config not found: {path}")
    if path.resolve() in _seen:
        raise UserError(f"{path}: 'defaults' loops back to itself ({' -> '.join(p.name for p in _seen)})")
    cfg = load_yaml(path.read_text(encoding="utf-8"), str(path)) or {}
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: a config is a mapping of keys to values")
    parents = cfg.pop("defaults", [])
    if not isinstance(parents, (str, list)):
        raise UserError(f"{path}: 'defaults' is a file name or a list of them")
    merged: dict = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        merged = _merge(merged, read_config(path.parent / str(parent), (*_seen, path.resolve())))
    return _merge(merged, cfg)
