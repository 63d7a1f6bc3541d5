"""One command-line pattern for every entry point: a typed dataclass whose fields are the flags.

Each field carries its help text and, for numbers, the smallest value that makes sense, so a bad value is refused
before any work starts with a message naming the flag (a negative --grad-clip would silently train uphill).
    @dataclass
    class Config:
        lr: float = arg(8e-5, "peak learning rate", min=0, strict=True)
    cfg = parse(Config, argv, __doc__, ValueError)
    device = pick_device(cfg.device, ValueError)      # "auto", "cpu", "cuda:1"; refused here if absent
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import MISSING, Field, field, fields
from typing import Any, TypeVar

import torch

C = TypeVar("C")


def arg(default: Any, help: str, *, min: float | None = None, strict: bool = False, **kw: Any) -> Any:
    """A flag: its default, help text, and the smallest allowed value (strict: the value must exceed it)."""
    return field(default=default, metadata=dict(help=help, min=min, strict=strict, argparse=kw))


def add_flags(p: argparse.ArgumentParser, cls: type) -> None:
    for f in fields(cls):
        # argparse %-formats help text (for %(default)s): a literal "3%" must be written "3%%"
        kw = {"help": f.metadata.get("help", "").replace("%", "%%"), **f.metadata.get("argparse", {})}
        name = "--" + f.name.replace("_", "-")
        if f.default is MISSING:
            p.add_argument(name, required=True, **kw)
        elif isinstance(f.default, bool):
            p.add_argument(name, default=f.default, action=argparse.BooleanOptionalAction, **kw)
        else:
            if f.default is not None:
                kw.setdefault("type", type(f.default))
            p.add_argument(name, default=f.default, **kw)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The header's examples as written, and each flag's default, except where there is nothing to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, "", [], argparse.SUPPRESS) or action.required:
            return action.help
        return super()._get_help_string(action)


def out_of_range(f: Field, value: Any) -> str | None:
    """Why `value` is refused for field `f`, or None."""
    low, strict = f.metadata.get("min"), f.metadata.get("strict")
    if low is None or not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if value < low or (strict and value == low):
        return f"must be {'greater than' if strict else 'at least'} {low:g}"
    return None


def parse(cls: type[C], argv: list[str] | None, description: str | None, error: type[Exception]) -> C:
    """Flags -> a `cls` instance, every number range-checked; a bad one raises `error` naming the flag."""
    p = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_flags(p, cls)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    for f in fields(cls):
        why = out_of_range(f, getattr(args, f.name))
        if why:
            raise error(f"--{f.name.replace('_', '-')}={getattr(args, f.name)}: {why}.")
    return cls(**vars(args))


def pick_device(name: str, error: type[Exception]) -> torch.device:
    """--device: "auto" is CUDA when there is one; a CUDA device this machine lacks is refused here, by `error`,
    not by a traceback from the first tensor moved there."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise error(f"--device {name}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise error(f"--device {name}: this torch has no CUDA device ({torch.__version__}). Use --device cpu.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise error(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ...).")
    return device
