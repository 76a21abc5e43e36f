"""run.json, checked: its format version and every key it holds, read through one schema.

``read_meta(run_dir)`` reads ``run_dir/run.json`` and returns its content after three checks, each
failing with one line that names the file (a :class:`pwfn_viz.files.FileError`, a ValueError):

1. it is JSON holding an object;
2. its ``format_version`` is one this pwfn_viz reads (a newer one asks to upgrade pwfn_viz; every
   older one is read as is, see ``FORMAT_HISTORY``);
3. every key of :data:`RUN_KEYS` (and of :data:`ROUND_KEYS` in each round) is present when
   required and of the expected type, and the rounds are numbered 0, 1, 2, ...

Format history (``FORMAT_HISTORY``): version 1 is the record without per-file checksums; version 2
adds ``checksums`` (sha256 of start.safetensors, every round file, steps.csv and layers.csv as last
committed).
"""
from __future__ import annotations

import json
import numbers
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..files import FileError, read_bytes

FORMAT_VERSION = 2
FORMAT_HISTORY = {
    1: "no per-file checksums: read as is (`pwfn-viz verify` reports \"no checksums recorded\")",
    2: "sha256 checksums of the record's files under \"checksums\"",
}


def _number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _mapping_of(check: Callable) -> Callable:
    return lambda v: isinstance(v, dict) and all(isinstance(k, str) and check(x) for k, x in v.items())


_SHAPE = lambda v: isinstance(v, list) and all(_int(d) and d >= 0 for d in v)   # noqa: E731
_SHA256 = lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None   # noqa: E731


@dataclass(frozen=True)
class Key:
    """One key of run.json: ``check(value)`` is True for a good value, ``kind`` says what that is."""
    name: str
    kind: str
    check: Callable
    required: bool = True


RUN_KEYS = (
    Key("format_version", "an integer", _int),
    Key("config", "an object with the run's settings (\"model\" a name, \"fractions\" a list)",
        lambda v: isinstance(v, dict) and isinstance(v.get("model"), str) and isinstance(v.get("fractions"), list)),
    Key("tensors", "an object of tensor name -> shape (a list of sizes)", _mapping_of(_SHAPE)),
    Key("baseline", "an object of metric name -> number", _mapping_of(_number)),
    Key("rounds", "a list of per-round objects", lambda v: isinstance(v, list) and all(isinstance(m, dict) for m in v)),
    Key("status", "\"running\" or \"complete\"", lambda v: v in ("running", "complete"), required=False),
    Key("model_spec", "an object or null", lambda v: v is None or isinstance(v, dict), required=False),
    Key("primary_metric", "a metric name", lambda v: isinstance(v, str), required=False),
    Key("higher_is_better", "true or false", lambda v: isinstance(v, bool), required=False),
    Key("checksums", "an object of file name -> sha256 (64 hex digits)", _mapping_of(_SHA256), required=False),
    Key("versions", "an object of package -> version", lambda v: isinstance(v, dict), required=False),
    Key("device", "a device name", lambda v: isinstance(v, str), required=False),
    Key("device_name", "a device description", lambda v: isinstance(v, str), required=False),
    Key("world_size", "an integer", _int, required=False),
    Key("seed", "an integer", _int, required=False),
    Key("created", "a date", lambda v: isinstance(v, str), required=False),
    Key("n_params", "an integer", _int, required=False),
    Key("n_converted", "an integer", _int, required=False),
    Key("warmup", "an object of name -> number (the Bayesian warm-up before round 0)", _mapping_of(_number),
        required=False),
)

ROUND_KEYS = (
    Key("round", "an integer", _int),
    Key("fraction", "a number", _number),
    Key("unique", "an integer", _int),
    Key("entropy", "a number", _number),
    Key("n_fixed", "an integer", _int, required=False),
)


def _problems(obj: dict, keys, where: str = "") -> list[str]:
    out = []
    for key in keys:
        if key.name not in obj:
            if key.required:
                out.append(f"key '{where}{key.name}' is missing")
        elif not key.check(obj[key.name]):
            out.append(f"key '{where}{key.name}' should be {key.kind}, got {json.dumps(obj[key.name])[:60]}")
    return out


def check_version(meta: dict, path) -> int:
    """The record's format version; a FileError naming ``path`` for one this pwfn_viz cannot read."""
    version = meta.get("format_version")
    if "format_version" not in meta:
        raise FileError(path, "key 'format_version' is missing: this is not a pwfn_viz run record "
                              f"(records carry the format version, {FORMAT_VERSION} today)")
    if not _int(version):
        raise FileError(path, f"key 'format_version' should be an integer, got {json.dumps(version)[:60]}")
    if version > FORMAT_VERSION:
        raise FileError(path, f"record format {version} was written by a newer pwfn_viz; this one reads formats "
                              f"1 to {FORMAT_VERSION}: upgrade pwfn_viz (pip install -U pwfn_viz) to read it")
    if version < 1:
        raise FileError(path, f"record format {version} is not a pwfn_viz format (known: 1 to {FORMAT_VERSION})")
    return version


def check_meta(meta, path) -> dict:
    """``meta`` (run.json's content) when its version and every key are as :data:`RUN_KEYS` and
    :data:`ROUND_KEYS` say; otherwise a FileError naming ``path`` and each problem (first five)."""
    if not isinstance(meta, dict):
        raise FileError(path, f"holds a JSON {type(meta).__name__}, not the run's object of keys")
    check_version(meta, path)
    problems = _problems(meta, RUN_KEYS)
    if not problems:
        primary = meta.get("primary_metric", "top1")
        extra = (Key(f"{primary}_before", "a number", _number), Key(f"{primary}_after", "a number", _number))
        for i, m in enumerate(meta["rounds"]):
            problems += _problems(m, ROUND_KEYS + extra, f"rounds[{i}].")
            if not problems and m["round"] != i:
                problems.append(f"rounds[{i}] is round {m['round']}: the rounds must be numbered 0, 1, 2, ...")
        fractions = [m["fraction"] for m in meta["rounds"] if _number(m.get("fraction"))]
        if not problems and any(b < a for a, b in zip(fractions, fractions[1:])):
            problems.append(f"the fixed fraction decreases between rounds ({fractions})")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise FileError(path, "; ".join(problems[:5]) + more)
    return meta


def read_meta(run_dir) -> dict:
    """``run_dir/run.json``, read and checked (see the module docstring)."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {Path(run_dir)} is not a pwfn_viz run directory "
                                "(create one with `pwfn-viz run --out DIR`)")
    text = read_bytes(path, "run record")
    try:
        meta = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise FileError(path, f"is not valid JSON ({type(err).__name__}: {str(err)[:120]}); the file is damaged "
                              "(a record's run.json is only ever replaced whole)") from None
    return check_meta(meta, path)
