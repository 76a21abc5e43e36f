"""The model settings a run records (its name and keyword arguments), checked before they go to
``create_model`` / ``timm.create_model``: a clear error for a bad spec instead of a deep TypeError."""
from __future__ import annotations

# Model keyword arguments the run itself sets (the dataset decides them); a spec may not override them.
_SET_BY_RUN = ("num_classes", "in_chans", "pretrained", "checkpoint")


def validate_model_spec(spec, where: str) -> None:
    """A clear ValueError for a model setting that cannot go to ``create_model`` / ``timm.create_model``:
    ``spec["name"]`` a non-empty string, ``spec["kwargs"]`` (optional) a dict of keyword arguments
    with string keys, none of them one the run sets itself, and ``num_classes`` / ``in_chans`` (when
    present) positive whole numbers. ``where`` names the source in the message (e.g. a run.json)."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: the model settings must be a mapping with a 'name', got {type(spec).__name__}")
    name, kwargs = spec.get("name"), spec.get("kwargs", {})
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: model name {name!r} must be a non-empty string (an own model or a timm name)")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise ValueError(f"{where}: model kwargs {kwargs!r} must be a mapping of keyword names to values")
    clash = sorted(set(kwargs) & set(_SET_BY_RUN))
    if clash:
        raise ValueError(f"{where}: model kwargs {clash} are set by the run itself (the dataset, pretrained, "
                         "checkpoint); give them as the run's own settings instead")
    for key in ("num_classes", "in_chans"):
        value = spec.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where}: model {key}={value!r} must be a whole number >= 1")


__all__ = ["validate_model_spec"]
