"""ONNX export of a fixed network whose converted weights stay indices into the codebook.

The fixed network is exported with ``torch.onnx.export(..., dynamo=True, optimize=False)`` (no
graph optimisation: it would fold batch norm into the convolution before it, moving that
convolution's weights off the codebook). Then every float32 initializer whose values all lie in the
run's codebook is replaced by

    <name>.pwfn_index   uint8 (K <= 256) or uint16 (K <= 65536) initializer, the weight's shape
    Cast(to=INT32)      ONNX's Gather takes int32/int64 indices only
    Gather(pwfn_codebook, indices, axis=0) -> <name>

with one shared float32 initializer ``pwfn_codebook`` (K,), and the model's ``metadata_props``
``pwfn_viz.format``, ``pwfn_viz.format_version`` and ``pwfn_viz.sha256`` (of the codebook and
index initializers, checked by :func:`read_onnx_indices`). The Gather's output keeps the old
initializer's name, so the rest of the graph is untouched, and it is bit-exact: the codebook holds
the exact float32 values. The file shrinks about 4x (uint8) or 2x (uint16); onnxruntime folds the
Gathers into float weights when it loads the file, so inference runs at float speed.

Limits: float32 models with one tensor input (``example_input``; the first dimension is the batch,
dynamic unless ``dynamic_batch=False``); opsets 17 and 18 tested (18 the default); tensors the
exporter computes from weights (rather than storing them) stay float.

Example:
    >>> report = export_onnx("runs/digits", "digits.onnx")       # doctest: +SKIP
    >>> print(report)                                            # doctest: +SKIP
    >>> import onnxruntime                                       # doctest: +SKIP
    >>> session = onnxruntime.InferenceSession("digits.onnx")    # doctest: +SKIP
    >>> logits, = session.run(None, {"input": images})           # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..files import FileError, reading
from .export import _order_key, codebook_indices, fixed_weights

CODEBOOK = "pwfn_codebook"
ONNX_FORMAT = "pwfn_viz.analysis.onnx_export"
ONNX_VERSION = 1
DATASET_IMAGE_SIZE = {"digits": 8, "mnist": 28, "cifar10": 32, "cifar100": 32, "synthetic": 32}


@dataclass
class OnnxReport:
    """An ONNX export: ``file_bytes`` on disk against ``float_bytes``, the same graph with float
    weights; ``indexed`` the initializers now decoded by a Gather (names) and ``float_left`` the
    converted tensors that stayed float (none when the exporter kept every weight as it is);
    ``max_abs_diff`` between onnxruntime's outputs and the fixed torch model's (None if unchecked)."""
    path: Path
    opset: int
    codebook_size: int
    index_dtype: str
    indexed: list = field(default_factory=list)
    n_indexed_weights: int = 0
    n_converted_weights: int = 0
    float_left: list = field(default_factory=list)
    file_bytes: int = 0
    float_bytes: int = 0
    max_abs_diff: float | None = None

    def __str__(self):
        check = "" if self.max_abs_diff is None else f"; onnxruntime vs torch: max |diff| {self.max_abs_diff:.2e}"
        left = f"; stayed float: {self.float_left[:5]}" if self.float_left else ""
        return (f"wrote {self.path} (ONNX opset {self.opset}): {self.file_bytes:,} bytes vs {self.float_bytes:,} with "
                f"float weights ({self.float_bytes / self.file_bytes:.2f}x smaller)\n"
                f"  {len(self.indexed)} weight tensors ({self.n_indexed_weights:,} of {self.n_converted_weights:,} "
                f"converted weights) as {self.index_dtype} indices into a {self.codebook_size}-value codebook"
                f"{left}{check}")


def example_input_for(run, batch: int = 2) -> torch.Tensor:
    """A random image batch of the run's input shape (registered models on image datasets)."""
    spec, config = run.meta.get("model_spec") or {}, run.config
    size = config.get("image_size") or DATASET_IMAGE_SIZE.get(config.get("dataset"))
    if not spec.get("name") or not spec.get("in_chans") or not size:
        raise ValueError(f"{run.path}: the input shape of this run is not known; call "
                         "export_onnx(run, path, model=..., example_input=x) with an input batch x")
    return torch.randn(batch, spec["in_chans"], size, size, generator=torch.Generator().manual_seed(0))


def _torch_to_onnx(net: nn.Module, x: torch.Tensor, opset: int, dynamic_batch: bool):
    """The ONNX ModelProto of ``net`` on ``x`` (the exporter's progress lines and warnings hushed)."""
    dims = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(net, (x,), dynamo=True, optimize=False, opset_version=opset,
                                    input_names=["input"], dynamic_shapes=dims, verbose=False)
    return program.model_proto


def index_initializers(proto, codebook: torch.Tensor) -> list[str]:
    """Replace (in place) every float32 initializer of ``proto`` with more than one value, all on
    ``codebook`` (sorted as :func:`.export.codebook_indices` makes it), by indices + Cast + Gather;
    returns the names replaced."""
    from onnx import TensorProto, helper, numpy_helper
    k = codebook.numel()
    if k > 1 << 16:
        raise ValueError(f"a codebook of {k} values does not fit uint16 indices (at most 65536)")
    dtype = np.uint8 if k <= 256 else np.uint16
    keys = _order_key(codebook.view(torch.int32)).numpy()
    graph, nodes, kept, names = proto.graph, [], [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < 2:
            kept.append(init)
            continue
        values = numpy_helper.to_array(init)
        key = _order_key(torch.from_numpy(values.astype("<f4").view(np.int32))).numpy()
        pos = np.minimum(np.searchsorted(keys, key), k - 1)
        if not np.array_equal(keys[pos], key):      # some value off the codebook: stays float
            kept.append(init)
            continue
        index = numpy_helper.from_array(pos.astype(dtype).reshape(values.shape), f"{init.name}.pwfn_index")
        kept.append(index)
        nodes += [helper.make_node("Cast", [index.name], [f"{init.name}.pwfn_index32"], to=TensorProto.INT32,
                                   name=f"{init.name}.pwfn_cast"),
                  helper.make_node("Gather", [CODEBOOK, f"{init.name}.pwfn_index32"], [init.name], axis=0,
                                   name=f"{init.name}.pwfn_gather")]
        names.append(init.name)
    del graph.initializer[:]
    graph.initializer.extend([numpy_helper.from_array(codebook.numpy().astype(np.float32), CODEBOOK), *kept])
    inputs = [i for i in graph.input if i.name not in set(names)]     # initializers listed as inputs (old IR)
    del graph.input[:]
    graph.input.extend(inputs)
    old = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + old)     # decoders first: the nodes stay topologically sorted
    return names


def _index_sha256(proto) -> str:
    """sha256 of the codebook and index initializers' bytes (little-endian), sorted by name."""
    import hashlib
    from onnx import numpy_helper
    digest = hashlib.sha256()
    for init in sorted((i for i in proto.graph.initializer if i.name == CODEBOOK or i.name.endswith(".pwfn_index")),
                       key=lambda i: i.name):
        array = numpy_helper.to_array(init)
        digest.update(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def _stamp(proto) -> None:
    from onnx import helper
    helper.set_model_props(proto, {"pwfn_viz.format": ONNX_FORMAT, "pwfn_viz.format_version": str(ONNX_VERSION),
                                   "pwfn_viz.sha256": _index_sha256(proto)})


def read_onnx_indices(path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(codebook, indices by weight name) of an ONNX export, its checksum verified; every problem
    is a :class:`FileError` naming the file.

    >>> codebook, indices = read_onnx_indices("digits.onnx")        # doctest: +SKIP
    >>> weight = codebook[indices["conv1.weight"]]                   # doctest: +SKIP
    """
    import onnx
    from onnx import numpy_helper
    with reading(path, "ONNX export"):
        proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    if props.get("pwfn_viz.format") != ONNX_FORMAT:
        raise FileError(path, "is not a pwfn_viz ONNX export (no 'pwfn_viz.format' metadata); "
                              "write one with `pwfn-viz export RUN_DIR --format onnx`")
    if props.get("pwfn_viz.format_version") != str(ONNX_VERSION):
        raise FileError(path, f"has ONNX export format version {props.get('pwfn_viz.format_version')}; this "
                              f"pwfn_viz reads version {ONNX_VERSION} (pip install -U pwfn_viz)")
    if _index_sha256(proto) != props.get("pwfn_viz.sha256"):
        raise FileError(path, "the ONNX export is damaged: its codebook and indices do not match the sha256 "
                              "in its metadata (re-export it)")
    inits = {i.name: i for i in proto.graph.initializer}
    if CODEBOOK not in inits:
        raise FileError(path, f"the ONNX export is damaged: no {CODEBOOK} initializer")
    indices = {name[:-len(".pwfn_index")]: numpy_helper.to_array(i) for name, i in inits.items()
               if name.endswith(".pwfn_index")}
    return numpy_helper.to_array(inits[CODEBOOK]), indices


def export_onnx(run_or_path, out_path, round_index: int = -1, model: nn.Module | None = None,
                example_input: torch.Tensor | None = None, opset: int = 18, dynamic_batch: bool = True,
                check: bool = True, atol: float = 1e-5) -> OnnxReport:
    """Write the fixed network of a finished run's round (default the last) as ONNX with indexed
    weights (see the module docstring). ``model``: an unconverted instance of the architecture (a
    run of your own model needs it); ``example_input``: an input batch (default a random one of the
    run's image shape). ``check`` runs the file with onnxruntime (and, with a dynamic batch, on a
    batch one larger) against the fixed torch model: a ValueError if outputs differ by more than ``atol``."""
    import importlib.util
    needed = ["onnx", "onnxscript"] + (["onnxruntime"] if check else [])     # onnxscript: torch's exporter
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"the ONNX export needs {', '.join(missing)}: pip install 'pwfn_viz[export]'")
    import onnx
    run, rnd, weights, _ = fixed_weights(run_or_path, round_index)
    net = run.plain_model_at(rnd.index, model=model)
    x = example_input if example_input is not None else example_input_for(run)
    proto = _torch_to_onnx(net, x, opset, dynamic_batch)
    for node in proto.graph.node:     # the exporter's stack traces: about half the file of a small network
        del node.metadata_props[:]
        node.doc_string = ""
    float_bytes = proto.ByteSize()
    codebook, _ = codebook_indices(weights)
    names = index_initializers(proto, codebook)
    _stamp(proto)
    onnx.checker.check_model(proto)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    from ..record.storage import atomic_write_bytes
    atomic_write_bytes(out, proto.SerializeToString())
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    left = [n for n in weights if n not in names]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    report = OnnxReport(path=out, opset=opset, codebook_size=codebook.numel(),
                        index_dtype="uint8" if codebook.numel() <= 256 else "uint16", indexed=names,
                        n_indexed_weights=sum(int(np.prod(shapes[n])) for n in names if n in shapes),
                        n_converted_weights=sum(w.numel() for w in weights.values()), float_left=left,
                        file_bytes=os.path.getsize(out), float_bytes=float_bytes)
    if check:
        report.max_abs_diff = check_onnx(out, net, x, atol, dynamic_batch)
    return report


def check_onnx(path, net: nn.Module, x: torch.Tensor, atol: float = 1e-5, dynamic_batch: bool = True) -> float:
    """The largest |difference| between onnxruntime's first output on ``path`` and ``net``'s, on
    ``x`` (and, with a dynamic batch, on ``x`` with its first row repeated once more); a
    ValueError naming the file if some output is off by more than ``atol + atol * |torch's output|``
    (float tolerance: onnxruntime sums in another order, and folds batch norm into convolutions)."""
    import onnxruntime
    with reading(path, "ONNX export"):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, within = 0.0, True
    for batch in ([x, torch.cat([x, x[:1]])] if dynamic_batch else [x]):
        got = session.run(None, {session.get_inputs()[0].name: batch.numpy()})[0]
        with torch.no_grad():
            want = net(batch)
        want = (want[0] if isinstance(want, (tuple, list)) else want).numpy()
        diff = np.abs(got - want)
        worst = max(worst, float(diff.max()))
        within &= bool((diff <= atol * (1 + np.abs(want))).all())
    if not within:
        raise ValueError(f"{path}: onnxruntime's outputs differ from the fixed model's by up to {worst:.3g} "
                         f"(tolerance {atol} + {atol} * |output|); check the model's operators against the opset")
    return worst
