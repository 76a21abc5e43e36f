"""The package uses torch through its public API only: no ``torch._C``, no private torch module or
class (``nn.modules.conv._ConvNd``, ``torch._dynamo``...), no private attribute of torch objects
(``module._parameters``, ``tensor._version``...). Private names change without notice between
torch releases; the public ones are what torch keeps working."""
from __future__ import annotations

import ast
from pathlib import Path

import torch.nn as nn

PACKAGE = Path(__file__).resolve().parents[1] / "pwfn_viz"
# nn.Module's and torch.Tensor's private attributes (what a `._name` access on a module or tensor reads)
PRIVATE_TORCH_ATTRS = {a for a in vars(nn.Module()) if a.startswith("_")} | {
    "_version", "_base", "_grad_fn", "_cdata", "_backward_hooks", "_C", "_dynamo", "_inductor", "_prims", "_refs",
    "_ConvNd", "_NormBase", "_BatchNorm", "_LRScheduler", "_functorch", "_subclasses"}


def _private_in_torch_chain(node: ast.Attribute) -> bool:
    """``torch.x._y`` / ``nn.x._y`` / ``F._y``: a private name reached from a torch module."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not (isinstance(node, ast.Name) and node.id in ("torch", "nn", "F", "triton")):
        return False
    return any(p.startswith("_") and not p.startswith("__") for p in parts)


def private_uses(source: str) -> list[str]:
    """Each ``a.b._private`` attribute reading a torch private name, and each ``from torch._x
    import`` / ``import torch._x``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and (node.attr in PRIVATE_TORCH_ATTRS or _private_in_torch_chain(node)):
            found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module and any(
                part.startswith("_") for part in node.module.split(".")[1:]) and node.module.startswith("torch"):
            found.append(f"line {node.lineno}: from {node.module}")
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names
                      if a.name.startswith("torch") and any(p.startswith("_") for p in a.name.split(".")[1:])]
    return found


def test_the_checker_finds_private_names():
    bad = "import torch\nx = torch._C._will_engine_execute_node\nm._parameters.get('w')\nfrom torch._dynamo import config\n" \
          "isinstance(m, nn.modules.conv._ConvNd)\n"
    assert sorted({int(f.split(":")[0][5:]) for f in private_uses(bad)}) == [2, 3, 4, 5]
    assert private_uses("import torch\nm.named_parameters(recurse=False)\nself._pwfn_names = ()\n") == []


def test_no_private_torch_name_in_the_package():
    offenders = {str(p.relative_to(PACKAGE.parent)): private_uses(p.read_text())
                 for p in sorted(PACKAGE.rglob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}
