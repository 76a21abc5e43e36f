"""Compressed export of a fixed network: one codebook plus indices, in one safetensors file.

After the last round every converted weight sits on one of a few hundred shared values, so the
network is stored as a codebook plus an index per weight, in one of two encodings (byte layout of
both in docs/export_format.md):

- ``"fixed"`` (format version 1): ``ceil(log2 K)`` bits per index, bit-packed per tensor;
- ``"ans"`` (format version 2, recommended: on the main job the indices take 40 % less than at
  fixed width, 1.4 % over the entropy bound): all indices in one entropy-coded stream
  (:mod:`.export_entropy`).

The fixed-width file holds

    codebook            float32 (K,): the distinct values over all converted tensors, sorted (distinct
                        bit patterns: -0.0 and 0.0 stay apart, so decoding is exact)
    indices/<name>      uint8: the index of each weight into the codebook, ``bits = ceil(log2 K)``
                        (at least 1) bits each, packed little-endian (see :func:`pack_bits`)
    state/<key>         everything else of the state_dict (norm layers, ...), stored as is
    metadata            JSON under the key "pwfn_viz": format version, model spec, bits, tensor
                        names and shapes in network order, sha256 of the tensors (see
                        :func:`payload_sha256`; checked on loading)

The entropy-coded file holds ``codebook`` and ``state/<key>`` alike, and instead of the indices
``ans/table`` (the index counts) and ``ans/stream`` (the coded indices of all tensors in the order
of the metadata's ``order`` list).

``load_exported(path)`` rebuilds a plain PyTorch model (no pwfn_viz layers) whose outputs equal
the fixed model's bit for bit. Only safetensors is read: nothing is unpickled.

Example:
    >>> report = export_run("runs/digits", "digits.ans.safetensors", encoding="ans")   # doctest: +SKIP
    >>> print(report)                                                                  # doctest: +SKIP
    >>> model = load_exported("digits.ans.safetensors")                                # doctest: +SKIP

A run of your own model exports the same way (the record holds every tensor); loading it needs an
unconverted instance of your architecture: ``load_exported(path, model=MyNet())``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..files import FileError, reading
from . import export_entropy as ans

EXPORT_FORMAT = "pwfn_viz.analysis.export"
EXPORT_VERSION = 2          # the newest version read; fixed-width files are still written as version 1
VERSIONS = {"fixed": 1, "ans": 2}
MAX_BITS = 32
_CHUNK = 1 << 20            # values per packing chunk (a multiple of 8: chunks start on a byte)


# ---------------------------------------------------------------------------------------------
# Bit packing
def packed_size(n: int, bits: int) -> int:
    """Bytes that ``n`` values of ``bits`` bits take when packed: ceil(n * bits / 8)."""
    return (n * bits + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in 1..{MAX_BITS}, got {bits}")


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers ``< 2**bits`` into uint8, little-endian: bit ``j`` of value ``i``
    is bit ``(i * bits + j) % 8`` of byte ``(i * bits + j) // 8``; unused high bits of the last byte
    are 0. Returns ``packed_size(len(values), bits)`` bytes.

    >>> pack_bits(torch.tensor([1, 2, 3]), 2).tolist()    # 01 10 11 -> 0b00111001
    [57]
    """
    _check_bits(bits)
    v = values.detach().flatten().to(torch.int64).cpu()
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 1 << bits):
        raise ValueError(f"values must be in [0, 2**{bits}), got [{int(v.min())}, {int(v.max())}]")
    out = torch.zeros(packed_size(v.numel(), bits), dtype=torch.int64)
    for start in range(0, v.numel(), _CHUNK):
        chunk = v[start:start + _CHUNK]
        pos0 = torch.arange(chunk.numel(), dtype=torch.int64) * bits + start * bits
        for j in range(bits):
            pos = pos0 + j
            out.scatter_add_(0, pos >> 3, ((chunk >> j) & 1) << (pos & 7))   # distinct bits: add == or
    return out.to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` values (int64).

    >>> unpack_bits(torch.tensor([57], dtype=torch.uint8), 2, 3).tolist()
    [1, 2, 3]
    """
    _check_bits(bits)
    if packed.numel() != packed_size(n, bits):
        raise ValueError(f"{packed.numel()} bytes given; {n} values of {bits} bits take {packed_size(n, bits)}")
    data = packed.detach().flatten().cpu().to(torch.int64)
    out = torch.zeros(n, dtype=torch.int64)
    for start in range(0, n, _CHUNK):
        count = min(_CHUNK, n - start)
        pos0 = torch.arange(count, dtype=torch.int64) * bits + start * bits
        acc = torch.zeros(count, dtype=torch.int64)
        for j in range(bits):
            pos = pos0 + j
            acc |= ((data[pos >> 3] >> (pos & 7)) & 1) << j
        out[start:start + count] = acc
    return out


def bits_for(codebook_size: int) -> int:
    """ceil(log2(K)), at least 1: the bits an index into a K-entry codebook needs.

    >>> [bits_for(k) for k in (1, 2, 3, 4, 5, 256, 257)]
    [1, 1, 2, 2, 3, 8, 9]
    """
    if codebook_size < 1:
        raise ValueError("the codebook is empty")
    return max(1, (codebook_size - 1).bit_length())


# ---------------------------------------------------------------------------------------------
# Codebook encoding
def _order_key(bits: torch.Tensor) -> torch.Tensor:
    """int32 float bit patterns -> keys that sort like the floats (-0.0 just before 0.0); its own inverse."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def codebook_indices(weights: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(codebook, indices): one float32 codebook of the distinct values over all tensors, sorted,
    and the index (int64) of every weight of the tensors, flattened and concatenated in order;
    distinct means distinct bit patterns (-0.0 and 0.0 are two entries), so decoding is bit-exact.

    >>> codebook, indices = codebook_indices({"a": torch.tensor([0.5, -1.0]), "b": torch.tensor([0.5])})
    >>> codebook.tolist(), indices.tolist()
    ([-1.0, 0.5], [1, 0, 1])
    """
    for name, w in weights.items():
        if w.dtype != torch.float32 and not torch.equal(w.float().to(w.dtype), w):
            raise ValueError(f"{name} is {w.dtype} and not exactly representable in the float32 codebook")
    if not weights:
        raise ValueError("no tensors to encode")
    flat = torch.cat([w.detach().cpu().float().flatten() for w in weights.values()])
    keys, inverse = torch.unique(_order_key(flat.view(torch.int32)), sorted=True, return_inverse=True)
    return _order_key(keys).view(torch.float32), inverse


def encode_tensors(weights: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """(codebook, packed indices by name, bits): the codebook of :func:`codebook_indices` and each
    tensor's indices at ``bits = ceil(log2 K)`` bits, packed.

    >>> codebook, packed, bits = encode_tensors({"w": torch.tensor([0.5, -1.0, 0.5])})
    >>> codebook.tolist(), bits, decode_tensors(codebook, packed, {"w": [3]}, bits)["w"].tolist()
    ([-1.0, 0.5], 1, [0.5, -1.0, 0.5])
    """
    codebook, inverse = codebook_indices(weights)
    bits = bits_for(codebook.numel())
    packed, offset = {}, 0
    for name, w in weights.items():
        packed[name] = pack_bits(inverse[offset:offset + w.numel()], bits)
        offset += w.numel()
    return codebook, packed, bits


def decode_tensors(codebook: torch.Tensor, packed: dict[str, torch.Tensor], shapes: dict, bits: int) -> dict:
    """Inverse of :func:`encode_tensors`: float32 tensors of the given shapes, by name."""
    out = {}
    for name, shape in shapes.items():
        idx = unpack_bits(packed[name], bits, int(torch.Size(shape).numel()))
        if idx.numel() and int(idx.max()) >= codebook.numel():
            raise ValueError(f"indices of {name} point past the {codebook.numel()}-entry codebook")
        out[name] = codebook[idx].view(shape)
    return out


def encode_tensors_ans(weights: dict[str, torch.Tensor]) -> tuple[torch.Tensor, bytes, bytes]:
    """(codebook, table, stream): the codebook of :func:`codebook_indices` and all indices
    entropy-coded in one stream (:func:`.export_entropy.encode_indices`).

    >>> codebook, table, stream = encode_tensors_ans({"w": torch.tensor([0.5, -1.0, 0.5, 0.5])})
    >>> decode_tensors_ans(codebook, table, stream, {"w": [2, 2]})["w"].tolist()
    [[0.5, -1.0], [0.5, 0.5]]
    """
    codebook, inverse = codebook_indices(weights)
    table, stream = ans.encode_indices(inverse.numpy(), codebook.numel())
    return codebook, table, stream


def decode_tensors_ans(codebook: torch.Tensor, table: bytes, stream: bytes, shapes: dict) -> dict:
    """Inverse of :func:`encode_tensors_ans`: float32 tensors of the given shapes, by name, cut
    from the decoded stream in the order of ``shapes``."""
    sizes = [int(torch.Size(s).numel()) for s in shapes.values()]
    idx = torch.from_numpy(ans.decode_indices(table, stream, codebook.numel(), sum(sizes)).astype(np.int64))
    values = codebook[idx]
    return {name: part.view(shape) for (name, shape), part in zip(shapes.items(), values.split(sizes))}


def payload_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) of the tensors' bytes (C order, little-endian), concatenated in the order of
    their names sorted by code point: what the export's metadata ``sha256`` holds, so that a
    damaged file is told apart from a different network.

    >>> tensors = {"b": torch.tensor([1], dtype=torch.uint8), "a": torch.tensor([2, 3], dtype=torch.uint8)}
    >>> payload_sha256(tensors) == hashlib.sha256(bytes([2, 3, 1])).hexdigest()
    True
    """
    digest = hashlib.sha256()
    for key in sorted(tensors):
        digest.update(tensors[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


# ---------------------------------------------------------------------------------------------
# Export
@dataclass
class ExportReport:
    """Sizes of an export, in bytes. ``compressed_bytes`` = codebook + indices (for ``"ans"`` the
    frequency table plus the coded stream); ``rest_bytes`` = the unquantised remaining state
    (stored as is); ``fp32_bytes`` = the converted tensors at 4 bytes per weight. ``ratio`` =
    fp32_bytes / compressed_bytes (quantised tensors); ``model_ratio`` = (fp32_bytes + rest_bytes) /
    (compressed_bytes + rest_bytes) (whole state). ``file_bytes`` is the file on disk (adds the
    safetensors header and metadata). ``entropy_bound`` = N * H / 8, H the entropy of the indices."""
    path: Path
    round_index: int
    n_tensors: int
    n_weights: int
    codebook_size: int
    bits: int
    codebook_bytes: int
    index_bytes: int
    rest_bytes: int
    fp32_bytes: int
    file_bytes: int
    encoding: str = "fixed"
    entropy_bound: float = 0.0

    compressed_bytes = property(lambda self: self.codebook_bytes + self.index_bytes)
    ratio = property(lambda self: self.fp32_bytes / self.compressed_bytes)
    model_ratio = property(lambda self: (self.fp32_bytes + self.rest_bytes) / (self.compressed_bytes + self.rest_bytes))

    def __str__(self):
        how = (f"{self.bits} bits per weight" if self.encoding == "fixed" else
               f"entropy-coded, {8 * self.index_bytes / self.n_weights:.3f} bits per weight "
               f"(fixed width: {self.bits})")
        bound = (f"; entropy bound {self.entropy_bound:,.0f} (indices {self.index_bytes / self.entropy_bound - 1:+.2%})"
                 if self.entropy_bound else "")
        return "\n".join([
            f"exported round {self.round_index} to {self.path} ({self.file_bytes:,} bytes on disk)",
            f"  {self.n_tensors} quantised tensors, {self.n_weights:,} weights, codebook {self.codebook_size} "
            f"values -> {how}",
            f"  compressed: {self.compressed_bytes:,} bytes (codebook {self.codebook_bytes:,} + indices "
            f"{self.index_bytes:,}{bound}) vs fp32 {self.fp32_bytes:,}: ratio {self.ratio:.2f}x",
            f"  unquantised rest: {self.rest_bytes:,} bytes; whole model {self.compressed_bytes + self.rest_bytes:,} "
            f"vs {self.fp32_bytes + self.rest_bytes:,}: ratio {self.model_ratio:.2f}x"])


def _fixed_round(run, round_index: int):
    if not run.complete:
        raise ValueError(f"{run.path} is an incomplete run ({len(run.rounds)} rounds recorded): only a finished "
                         f"run is exported; finish it with `pwfn-viz run --resume {run.path}`")
    if not -len(run.rounds) <= round_index < len(run.rounds):
        raise IndexError(f"round {round_index} not recorded; this run has rounds 0..{len(run.rounds) - 1}")
    rnd = run.rounds[round_index]
    free = sum(int((~f).sum()) for f in rnd.fixed.values())
    if free:
        raise ValueError(f"round {rnd.index} of {run.path} leaves {free:,} weights unfixed (fraction "
                         f"{rnd.fraction}): only a round where every weight is fixed can be exported "
                         f"(the last round, --round -1)")
    return rnd


def fixed_weights(run_or_path, round_index: int = -1):
    """(run, round, converted weights by name, the rest of the state_dict as ``state/<key>``) of a
    finished run's round in which every weight is fixed."""
    from ..record.rundir import Run, load_run
    run = run_or_path if isinstance(run_or_path, Run) else load_run(run_or_path)
    rnd = _fixed_round(run, round_index)
    return run, rnd, rnd.mu, {k: v for k, v in rnd.tensors.items() if k.startswith("state/")}


def export_run(run_or_path, out_path, round_index: int = -1, model: nn.Module | None = None,
               encoding: str = "fixed") -> ExportReport:
    """Write the network of round ``round_index`` (default the last) of a finished run as a
    codebook plus indices (see the module docstring): ``encoding`` "fixed" (bit-packed, format
    version 1) or "ans" (entropy-coded, version 2); returns the sizes. ``model`` (an unconverted
    instance of the architecture, optional) is checked to fit the export before writing, so that
    ``load_exported(path, model=...)`` will load it."""
    from ..record.storage import atomic_save_tensors
    if encoding not in VERSIONS:
        raise ValueError(f"encoding must be one of {sorted(VERSIONS)}, got {encoding!r}")
    run, rnd, weights, rest = fixed_weights(run_or_path, round_index)
    if model is not None:
        _check_fits(model, {**{k[len("state/"):]: v for k, v in rest.items()}, **weights}, run.path)
    if encoding == "fixed":
        codebook, packed, bits = encode_tensors(weights)
        tensors = {"codebook": codebook, **{f"indices/{name}": p for name, p in packed.items()}}
        index_bytes = sum(p.numel() for p in packed.values())
    else:
        codebook, table, stream = encode_tensors_ans(weights)
        bits = bits_for(codebook.numel())
        tensors = {"codebook": codebook, "ans/table": _bytes_tensor(table), "ans/stream": _bytes_tensor(stream)}
        index_bytes = len(table) + len(stream)
    tensors.update(rest)
    n = sum(w.numel() for w in weights.values())
    meta = {"format": EXPORT_FORMAT, "format_version": VERSIONS[encoding], "model_spec": run.meta["model_spec"],
            "bits": bits, "codebook_size": codebook.numel(), "round": rnd.index,
            "tensors": {name: list(w.shape) for name, w in weights.items()}, "sha256": payload_sha256(tensors)}
    if encoding == "ans":
        meta.update(encoding="ans", order=list(weights), n_weights=n,
                    coder={"library": "constriction", "coder": "AnsCoder", "state_bits": 64, "word_bits": 32,
                           "precision": ans.PRECISION})
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(out, tensors, metadata={"pwfn_viz": json.dumps(meta)})
    counts = np.bincount(codebook_indices(weights)[1].numpy(), minlength=codebook.numel())
    return ExportReport(path=out, round_index=rnd.index, n_tensors=len(weights), n_weights=n,
                        codebook_size=codebook.numel(), bits=bits, codebook_bytes=codebook.numel() * 4,
                        index_bytes=index_bytes, rest_bytes=sum(v.numel() * v.element_size() for v in rest.values()),
                        fp32_bytes=4 * n, file_bytes=os.path.getsize(out), encoding=encoding,
                        entropy_bound=ans.entropy_bound_bytes(counts))


# ---------------------------------------------------------------------------------------------
# Loading
def read_exported(path) -> tuple[dict[str, torch.Tensor], dict]:
    """The decoded state_dict of an export (weights in float32 from the codebook, the rest as
    stored) and its metadata. Every problem with the file is a :class:`FileError` naming it."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (write one with `pwfn-viz export RUN_DIR --out {path}`)")
    with reading(path, "pwfn_viz export (safetensors)"), safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get("pwfn_viz")
        meta = json.loads(raw) if raw else {}
        if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{path} is not a pwfn_viz export (no 'pwfn_viz' metadata); "
                             "write one with `pwfn-viz export`")
        version = meta.get("format_version")
        if isinstance(version, int) and version > EXPORT_VERSION:
            raise ValueError(f"{path} has export format version {version}, newer than this pwfn_viz reads "
                             f"({EXPORT_VERSION}): upgrade pwfn_viz (pip install -U pwfn_viz)")
        if version not in VERSIONS.values():
            raise ValueError(f"{path} has export format version {version}; this pwfn_viz "
                             f"reads versions {sorted(VERSIONS.values())}")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    _check_export_meta(meta, path)
    if "sha256" in meta and payload_sha256(tensors) != meta["sha256"]:
        raise FileError(path, "the export is damaged: its tensors do not match the sha256 in its metadata "
                              "(re-export it with `pwfn-viz export`)")
    entropy = version == VERSIONS["ans"]
    needed = ["codebook", *(["ans/table", "ans/stream"] if entropy else [f"indices/{n}" for n in meta["tensors"]])]
    missing = [k for k in needed if k not in tensors]
    if missing:
        raise FileError(path, f"the export is damaged: {missing[:5]} missing")
    state = {k[len("state/"):]: v for k, v in tensors.items() if k.startswith("state/")}
    if not bool(torch.isfinite(tensors["codebook"]).all()):
        raise FileError(path, "the codebook holds NaN or infinite values; the export is damaged")
    try:
        if entropy:
            shapes = {name: meta["tensors"][name] for name in meta["order"]}
            state.update(decode_tensors_ans(tensors["codebook"], tensors["ans/table"].numpy().tobytes(),
                                            tensors["ans/stream"].numpy().tobytes(), shapes))
        else:
            packed = {n: tensors[f"indices/{n}"] for n in meta["tensors"]}
            state.update(decode_tensors(tensors["codebook"], packed, meta["tensors"], meta["bits"]))
    except (ValueError, RuntimeError, IndexError) as err:
        raise FileError(path, f"the export is damaged: {err}") from None
    return state, meta


def _check_export_meta(meta: dict, path) -> None:
    """The keys of an export's metadata that loading reads, each of its type."""
    shape = lambda v: isinstance(v, list) and all(isinstance(d, int) and d >= 0 for d in v)   # noqa: E731
    checks = {"bits": (lambda v: isinstance(v, int) and 1 <= v <= MAX_BITS, f"an integer in 1..{MAX_BITS}"),
              "tensors": (lambda v: isinstance(v, dict) and all(shape(s) for s in v.values()),
                          "an object of tensor name -> shape"),
              "model_spec": (lambda v: v is None or isinstance(v, dict), "an object")}
    if meta.get("format_version") == VERSIONS["ans"]:
        names = set(meta["tensors"]) if isinstance(meta.get("tensors"), dict) else set()
        checks["order"] = (lambda v: isinstance(v, list) and len(v) == len(names) and set(v) == names,
                           "the list of the tensors' names")
        checks["sha256"] = (lambda v: isinstance(v, str), "a hex string")
    problems = [f"key {k!r} is missing" if k not in meta else f"key {k!r} should be {kind}"
                for k, (ok, kind) in checks.items() if k not in meta or not ok(meta[k])]
    if problems:
        raise FileError(path, "its 'pwfn_viz' metadata is damaged: " + "; ".join(problems))


def _check_fits(model: nn.Module, state: dict, where) -> None:
    """A ValueError unless ``state`` has exactly ``model``'s state_dict keys and shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or reshaped:
        raise ValueError(f"{where} does not fit {type(model).__name__}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}" + (f", other shapes {reshaped[:5]}" if reshaped else ""))


def load_exported(path, model: nn.Module | None = None) -> nn.Module:
    """A plain PyTorch model (eval mode) with the exported weights. ``model`` is an unconverted
    instance of the architecture (needed for a run of your own model); by default it is built from
    the stored model spec with :func:`pwfn_viz.models.factory.create_model`."""
    state, meta = read_exported(path)
    if model is None:
        from ..models.factory import create_model
        from ..models.spec import validate_model_spec
        spec = meta["model_spec"] or {}
        if not spec.get("name"):
            cls = spec.get("class", "YourModel").rsplit(".", 1)[-1]
            raise ValueError(f"{path} holds your own model ({spec.get('class', cls)}), which the export cannot "
                             f"rebuild: pass an unconverted instance, load_exported(path, model={cls}())")
        validate_model_spec({"num_classes": None, "in_chans": None, **spec}, f"{path} model_spec")
        model = create_model(spec["name"], num_classes=spec["num_classes"], in_chans=spec["in_chans"],
                             **spec.get("kwargs", {}))
    _check_fits(model, state, path)
    model.load_state_dict(state, strict=True)
    return model.eval()
