"""Writing and reading a run's files safely: every write goes to a temporary name beside the target
and is renamed over it (a killed run never leaves a half file); every read checks the sha256
run.json recorded and, for tensors, their names, shapes and finite values. Nothing is unpickled:
tensors are safetensors, tables CSV, metadata JSON.

    >>> atomic_write_text(Path("out/notes.txt"), "hello")        # doctest: +SKIP
    >>> load_tensors("runs/digits/round_03.safetensors")          # doctest: +SKIP
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..core.bayes import bayes_tensors, state_keys
from ..files import FileError, read_bytes, reading, sha256_bytes

_UMASK = os.umask(0)
os.umask(_UMASK)


def _temp_beside(path: Path) -> str:
    """A temporary file next to ``path`` (same file system, so os.replace is atomic), with the
    permissions a plain open() would give."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)
    return tmp


# ---------------------------------------------------------------------------------------------
# Atomic writes
def atomic_write_bytes(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns its sha256 (hex)."""
    path = Path(path)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return sha256_bytes(data)


def atomic_write_text(path: Path, text: str) -> str:
    """Write ``text`` to ``path`` atomically; returns the file's sha256 (hex)."""
    return atomic_write_bytes(path, text.encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> str:
    """Save ``tensors`` as safetensors at ``path`` atomically; returns the file's sha256 (hex)."""
    data = save_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, data)


def atomic_append_csv(path: Path, frame: pd.DataFrame) -> str:
    """Rewrite ``path`` with ``frame``'s rows appended (atomic; files stay small); returns the
    file's sha256 (hex)."""
    old = read_csv(path) if Path(path).exists() else None
    new = frame if old is None or old.empty else pd.concat([old, frame], ignore_index=True)
    buf = io.StringIO()
    new.to_csv(buf, index=False)
    return atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------------------------------------
# Reading files of a record, checked
def _checked(path: Path, data: bytes, sha: str | None) -> None:
    if sha is not None and sha256_bytes(data) != sha:
        raise FileError(path, f"checksum mismatch: the file changed since run.json recorded it (sha256 "
                              f"{sha[:12]}... recorded, {sha256_bytes(data)[:12]}... found); the file is damaged")


def read_csv(path, sha: str | None = None) -> pd.DataFrame:
    """A CSV table of a record (``sha``: its recorded sha256, checked when given)."""
    path = Path(path)
    data = read_bytes(path, "table")
    _checked(path, data, sha)
    if data and not data.endswith(b"\n"):
        raise FileError(path, "this table is truncated: its last line is incomplete")
    with reading(path, "CSV table"):
        table = pd.read_csv(io.BytesIO(data)) if data.strip() else pd.DataFrame()
    if len(table) and "round" not in table.columns:
        raise FileError(path, f"this table has no 'round' column (columns: {list(table.columns)[:6]}); the file is damaged")
    if len(table) and not pd.api.types.is_integer_dtype(table["round"]):
        raise FileError(path, "its 'round' column holds values that are not round numbers; the file is damaged "
                              "or truncated")
    return table


def check_snapshot(tensors: dict[str, torch.Tensor], shapes: dict, path, pre: bool = False) -> None:
    """A FileError naming ``path`` unless every converted tensor of ``shapes`` ({name: shape}) is
    in ``tensors`` as mu/sigma/fixed (and pre/... when ``pre``) of its shape, mu and sigma finite."""
    for name, shape in shapes.items():
        for group in ("mu/", "sigma/", "fixed/", *(("pre/mu/", "pre/sigma/", "pre/fixed/") if pre else ())):
            t = tensors.get(group + name)
            if t is None:
                raise FileError(path, f"tensor {group + name!r} is missing (the record lists {name!r})")
            if list(t.shape) != list(shape):
                raise FileError(path, f"tensor {group + name!r} has shape {list(t.shape)}, the record {list(shape)}")
            if "fixed/" not in group and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise FileError(path, f"tensor {group + name!r} holds NaN or infinite values; the file is damaged")


def load_tensors(path, sha: str | None = None, shapes: dict | None = None, pre: bool = False) -> dict[str, torch.Tensor]:
    """A record's safetensors file, read once: its recorded sha256 checked when given, then (with
    ``shapes``) its tensors by :func:`check_snapshot`. Any damage is a FileError naming the file."""
    path = Path(path)
    data = read_bytes(path, "tensor file")
    _checked(path, data, sha)
    with reading(path, "safetensors file"):
        tensors = load_safetensors(data)
    if shapes is not None:
        check_snapshot(tensors, shapes, path, pre)
    return tensors


# ---------------------------------------------------------------------------------------------
# Snapshots of a converted model
def snapshot_tensors(model: torch.nn.Module, pre: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """mu/sigma/fixed of every converted tensor under its original name, the rest of the
    state_dict under "state/", and optional pre-snap tensors under "pre/"."""
    out = {}
    bayes_keys = set()
    for t in bayes_tensors(model):
        out[f"mu/{t.name}"] = t.value
        out[f"sigma/{t.name}"] = t.sigma.detach()
        out[f"fixed/{t.name}"] = t.fixed
        bayes_keys |= set(t.state_keys().values())
    for k, v in model.state_dict().items():
        if k not in bayes_keys:
            out[f"state/{k}"] = v
    for k, v in (pre or {}).items():
        out[f"pre/{k}"] = v
    return out


def state_dict_from_snapshot(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The converted model's state_dict rebuilt from a snapshot."""
    sd = {k[len("state/"):]: v for k, v in tensors.items() if k.startswith("state/")}
    for k, mu in tensors.items():
        if not k.startswith("mu/"):
            continue
        name = k[len("mu/"):]
        fixed, keys = tensors[f"fixed/{name}"].bool(), state_keys(name)
        sd[keys["mu"]] = mu
        sd[keys["sigma"]] = tensors[f"sigma/{name}"]
        sd[keys["fixed"]] = fixed
        sd[keys["fixed_value"]] = torch.where(fixed, mu, torch.zeros_like(mu))
    return sd


def check_tensors(model: torch.nn.Module, recorded: dict[str, list], problem: str) -> None:
    """Raise a ValueError starting with ``problem`` unless the converted tensors of ``model`` have
    exactly the names and shapes ``recorded`` ({name: shape}, as run.json's "tensors")."""
    have = {t.name: list(t.mu.shape) for t in bayes_tensors(model)}
    if have == {n: list(s) for n, s in recorded.items()}:
        return
    missing = [n for n in recorded if n not in have][:3]
    extra = [n for n in have if n not in recorded][:3]
    reshaped = [f"{n} {have[n]} (recorded {list(recorded[n])})" for n in recorded
                if n in have and have[n] != list(recorded[n])][:3]
    details = "; ".join(part for part in (f"missing {missing}" if missing else "", f"not recorded {extra}" if extra else "",
                                         f"other shapes: {', '.join(reshaped)}" if reshaped else "") if part)
    raise ValueError(f"{problem}: its converted tensors differ from the record ({details}). Pass an instance of "
                     "the architecture the run recorded, built the same way")
