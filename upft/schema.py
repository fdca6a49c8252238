"""Each stage's settings are one dataclass, written once. Its fields are the command's flags
(``add_flags``), the keys of the stage's config section (``keys``) and the values checked
before anything runs (``check_types``, then the dataclass's own ``check`` for ranges), so the
command line, the experiment runner and the launchers cannot drift apart.

A field's metadata may give ``help`` and ``choices`` for its flag.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from upft.errors import UserError

TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _kind(annotation: str) -> tuple[str, bool]:
    """("str", True) for "str | None": the base type and whether None is allowed."""
    parts = [p.strip() for p in annotation.split("|")]
    return next(p for p in parts if p != "None"), "None" in parts


def keys(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def add_flags(ap: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag-name`` per field (a bool is a switch), with the field's default."""
    for f in fields(cls):
        if f.name in skip:
            continue
        flag, kind = "--" + f.name.replace("_", "-"), _kind(f.type)[0]
        if kind == "bool":
            ap.add_argument(flag, action="store_true", help=f.metadata.get("help"))
        else:
            ap.add_argument(flag, type=TYPES[kind], default=f.default, help=f.metadata.get("help"),
                            choices=f.metadata.get("choices"))


def from_args(cls, args: argparse.Namespace):
    """The settings held by parsed flags (see ``add_flags``)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def check_types(settings, section: str) -> None:
    """Every value has its field's type (a config may say ``lr: abc`` or ``gpus: true``)."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        kind, optional = _kind(f.type)
        if value is None and optional:
            continue
        want = (int, float) if kind == "float" else TYPES[kind]
        if not isinstance(value, want) or (isinstance(value, bool) and kind != "bool"):
            raise UserError(f"{section}.{f.name} must be {f.type}, got {value!r}")
        if f.metadata.get("choices") and value not in f.metadata["choices"]:
            raise UserError(f"{section}.{f.name} must be one of {', '.join(f.metadata['choices'])}, got {value!r}")
