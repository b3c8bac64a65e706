"""Loading user-supplied weights into a torch model, with errors that say what is wrong.

Accepted files: ``.safetensors``; ``.bin`` / ``.pth`` / ``.pt`` / ``.ckpt`` loaded with
``torch.load(weights_only=True)`` (no pickled code runs). A checkpoint may wrap the state
dict (``state_dict``, ``model``, ``teacher``, ``student``, ``module``) and prefix its keys
(``module.``, ``model.``, ``backbone.``, ``encoder.``, ``trunk.``, ``teacher.``,
``_orig_mod.``); both are undone when the model's own keys say so.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from wsimm.errors import ConfigError

__all__ = ["file_fingerprint", "load_state_dict", "load_weights"]

_WRAPPERS = ("state_dict", "model", "teacher", "student", "module", "model_state_dict")
_PREFIXES = ("module.", "_orig_mod.", "model.", "backbone.", "encoder.", "trunk.", "teacher.")


def file_fingerprint(path: str) -> str:
    """``sha1:<hex>`` of the whole file: weights are worth hashing in full (read once)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return f"sha1:{h.hexdigest()}"


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a state dict from a weights file (see the module docstring for formats)."""
    import torch

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ConfigError(f"weights file {p} does not exist; check --weights")
    try:
        if p.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd: Any = load_file(p, device="cpu")
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConfigError(
            f"{p}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "pass a .safetensors file or a torch state dict (.bin/.pth)"
        ) from e
    for _ in range(3):  # unwrap {"state_dict": {...}} and similar, possibly nested
        if isinstance(sd, dict) and not any(torch.is_tensor(v) for v in sd.values()):
            inner = next((sd[k] for k in _WRAPPERS if isinstance(sd.get(k), dict)), None)
            if inner is None:
                break
            sd = inner
    if not isinstance(sd, dict) or not any(torch.is_tensor(v) for v in sd.values()):
        raise ConfigError(f"{p}: no tensors found; expected a model state dict")
    return {k: v for k, v in sd.items() if torch.is_tensor(v)}


def _strip_prefixes(sd: dict[str, Any], model_keys: set[str]) -> dict[str, Any]:
    """Strip wrapper prefixes shared by every key, as long as that matches more model keys."""
    while True:
        for pre in _PREFIXES:
            if sd and all(k.startswith(pre) for k in sd):
                stripped = {k[len(pre) :]: v for k, v in sd.items()}
                if len(set(stripped) & model_keys) > len(set(sd) & model_keys):
                    sd = stripped
                    break
        else:
            return sd


def _fmt(keys: list[str], n: int = 6) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def load_weights(
    model: Any,
    path: str | os.PathLike[str],
    *,
    name: str,
    ignore_unexpected: tuple[str, ...] = (),
) -> None:
    """Load ``path`` into ``model`` strictly.

    ``ignore_unexpected`` lists key prefixes a checkpoint may carry that the model does not
    use (e.g. ``layer4.`` and ``fc.`` of a full ResNet50 for the truncated encoder).
    Missing keys, unexpected keys and shape mismatches raise a :class:`ConfigError` naming
    the keys and the flag to fix.
    """
    sd = load_state_dict(path)
    own = model.state_dict()
    sd = _strip_prefixes(sd, set(own))
    sd = {k: v for k, v in sd.items() if not k.startswith(ignore_unexpected)}
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(sd) & set(own))
        if tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_fmt(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_fmt(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches: {_fmt(shapes, 3)}")
        raise ConfigError(
            f"{os.fspath(path)} does not fit encoder {name!r}: {'; '.join(parts)}. "
            "Check that --weights belongs to this --encoder"
        )
    model.load_state_dict(sd, strict=True)
