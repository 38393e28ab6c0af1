"""Checkpoints: safe loading of official and project files, atomic saving, and finding the file to load.

The official format (the released ``AHIQ_vit_p8_epoch33.pth`` and the official train.py) is a dict with
``regressor_model_state_dict`` and ``deform_net_model_state_dict`` and possibly ``optimizer_state_dict``,
``scheduler_state_dict``, ``epoch`` and a numpy float64 ``loss``. Project files carry the same two keys (so the
official code loads them), pyiqa's ``params`` key (the same tensors, stored once), an ``ahiq`` metadata dict (the
model configuration, label normalisation, dataset) and, in ``last.pth``, whatever resuming needs. Files are always
read with ``torch.load(weights_only=True)``: only the numpy scalar types official files contain are allowed.
"""
from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from utils.errors import AHIQError
from utils.files import atomic_torch_save, require_path

OFFICIAL_KEYS = {"deform_net": "deform_net_model_state_dict", "regressor": "regressor_model_state_dict"}


def _numpy_safe_globals() -> list:
    """The numpy types a pickled ``np.float64`` needs, under its numpy 1.x and numpy 2 qualified names."""
    core = np._core if hasattr(np, "_core") else np.core
    scalar = core.multiarray.scalar
    allowed = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    if hasattr(np, "dtypes"):
        allowed.append(np.dtypes.Float64DType)
    return allowed


def load_checkpoint(path: str) -> dict[str, Any]:
    """Read a checkpoint file safely (no code is unpickled); errors name the file."""
    require_path(path, "checkpoint", "run `sh download.sh` for the released PIPAL checkpoint or pass an existing "
                 "file with --ckpt")
    what, ckpt = _not_a_checkpoint(path), None
    if what is None:
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # corrupt, truncated, unsafe or foreign files all end here with the file named
            text = str(err).strip()
            if "Weights only load failed" in text:
                found = re.search(r"(?:unsupported|Unsupported)[^\n.]*(?:GLOBAL|global)[^\n]*", text)
                detail = found.group(0).strip().rstrip(".") if found else text.splitlines()[-1][:200]
                what = (f"refused: it holds Python objects that could run code ({detail}); AHIQ loads only tensors "
                        "and plain values, so this is not a file written by AHIQ, the official code or pyiqa; if you "
                        "trust it, re-save just its state dicts")
            else:
                first = text.splitlines()[0] if text else type(err).__name__
                what = f"cannot be read ({first[:200]}); the file may be torn or truncated: copy or download it again"
    if what is None and not isinstance(ckpt, Mapping):
        what = f"it holds a {type(ckpt).__name__}, not a dict of state dicts"
    if what:
        raise AHIQError(f"{path}: not a checkpoint AHIQ can read: {what}")
    return dict(ckpt)


def _not_a_checkpoint(path: str) -> str | None:
    """What a file that cannot be a PyTorch checkpoint is (from its first bytes), or None: torch.save writes a zip
    archive (``PK``), older versions a pickle (``0x80``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return None  # torch.load reports it
    if not head:
        return "the file is empty (an interrupted copy or download?); copy or download it again"
    if head.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the file itself; run `git lfs pull` or download the file"
    if head.lstrip()[:1] == b"<":
        return "an HTML or XML page (a failed download or a login page?); download the file again"
    if not head.startswith((b"PK\x03\x04", b"\x80")):
        return f"it starts with {head[:16]!r}, not a zip archive or a pickle; pass the .pth file itself"
    return None


def _strip_module(sd: Mapping[str, Any]) -> dict[str, Any]:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def head_state_dicts(ckpt: Mapping[str, Any], path: str) -> dict[str, dict[str, torch.Tensor]]:
    """The ``deform_net`` and ``regressor`` state dicts of a checkpoint in any supported layout."""
    if all(key in ckpt for key in OFFICIAL_KEYS.values()):
        return {part: _strip_module(ckpt[key]) for part, key in OFFICIAL_KEYS.items()}
    flat = ckpt
    for key in ("params", "state_dict", "model"):  # pyiqa / whole-model state dicts
        if isinstance(ckpt.get(key), Mapping):
            flat = ckpt[key]
    flat = _strip_module(flat)
    parts = {part: {k[len(part) + 1:]: v for k, v in flat.items() if k.startswith(part + ".")}
             for part in OFFICIAL_KEYS}
    if not parts["regressor"]:
        shown = ", ".join(list(ckpt)[:6])
        raise AHIQError(f"{path}: not an AHIQ checkpoint: no {' / '.join(OFFICIAL_KEYS.values())} "
                        f"(top-level keys: {shown}); pass a file written by AHIQ's train.py or the released one")
    return parts


def check_state_dict(sd: Mapping[str, Any], own: Mapping[str, torch.Tensor], path: str, part: str | None,
                     what: str, fix: str, strict: bool = True) -> None:
    """``sd`` (read from a file) fits ``own`` (a module's state dict): every key of ``own`` with its shape (``strict``:
    no other key), a floating-point tensor where ``own`` has one, and every value finite (a NaN would make every score
    NaN, silently). Refused in one line naming ``path``, the ``part`` (a key prefix) and the keys at fault, the model
    it should fit (``what``) and the ``fix``."""
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own] if strict else []
    shape = [k for k in own if k in sd and tuple(getattr(sd[k], "shape", ())) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        details = "; ".join(f"{name}: {keys[:4]}" for name, keys in (
            ("missing", missing), ("unexpected", unexpected),
            ("wrong shape", [f"{k} {tuple(getattr(sd[k], 'shape', ()))}, expected {tuple(own[k].shape)}"
                             for k in shape])) if keys)
        raise AHIQError(f"{path}: {part or 'its state dict'} does not fit {what} ({details}); {fix}")
    for k, v in own.items():
        value = sd[k]
        if not v.is_floating_point():
            continue
        if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
            problem = f"is {getattr(value, 'dtype', type(value).__name__)}, not a floating-point tensor"
        elif not torch.isfinite(value).all():
            problem = "holds NaN or infinite values (a diverged training run, a damaged copy?)"
        else:
            continue
        raise AHIQError(f"{path}: {part + '.' if part else ''}{k} {problem}; {fix}")


def load_head_weights(model: nn.Module, ckpt: Mapping[str, Any], path: str) -> None:
    """Load ``deform_net`` and ``regressor`` of ``model`` from a checkpoint dict; a mismatch names the keys."""
    for part, sd in head_state_dicts(ckpt, path).items():
        module = getattr(model, part)
        check_state_dict(sd, module.state_dict() if module is not None else {}, path, part,
                         "this AHIQ model", "pass a checkpoint of this architecture (or an earlier one of the run "
                         "when it diverged)")
        if module is not None:
            module.load_state_dict(sd)


META_KEY = "ahiq"  # the project's own record in a checkpoint, beside the official keys


def meta_of(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The project's record in a checkpoint: ``model`` (its configuration), ``backbones`` (source and digest of each),
    ``label_norm``, ``dataset``, ``train_list``, ``split``, ``inputs`` (digests of the lists), ``best_metric``,
    ``epochs_trained`` and ``best_validation`` (train.py's :class:`Saver`). Empty for official and pyiqa files (and
    for a record that is not a mapping: nothing of it can be trusted)."""
    meta = ckpt.get(META_KEY)
    return dict(meta) if isinstance(meta, Mapping) else {}


def save_weights(path: str, model: nn.Module, meta: Mapping[str, Any] | None = None, **extra: Any) -> None:
    """Save the trainable parts under the two official keys and pyiqa's ``params`` key (the same tensors, stored
    once), the ``ahiq`` metadata (the model's configuration first, then where its backbones came from:
    ``model.backbones``) and any extra entries."""
    parts = _on_cpu(model.trainable_state_dict())
    ckpt: dict[str, Any] = {key: parts.get(part, {}) for part, key in OFFICIAL_KEYS.items()}  # both, always
    ckpt["params"] = {f"{part}.{k}": v for part, sd in parts.items() for k, v in sd.items()}
    ckpt[META_KEY] = {"model": model.config.to_dict(), "backbones": getattr(model, "backbones", None), **(meta or {})}
    ckpt.update(_on_cpu(extra))
    atomic_torch_save(ckpt, path)


def _on_cpu(obj: Any) -> Any:
    """Tensors (in dicts, lists, tuples) on the CPU: a file written on a GPU loads anywhere without device maps."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, Mapping):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


def choose_checkpoint(ckpt: str | None, run_dir: str, load_epoch: int = -1) -> str:
    """The file to score with: ``ckpt`` when given, else the one :func:`find_checkpoint` picks in ``run_dir``."""
    return ckpt or find_checkpoint(run_dir, load_epoch)


_EPOCH_RE = re.compile(r"^epoch_?(\d+)\.pth$")


def find_checkpoint(folder: str, load_epoch: int = -1) -> str:
    """The file test.py loads from a run folder.

    ``load_epoch`` N: ``epoch_N.pth`` (or the official ``epochN.pth``). -1: ``best.pth``, else the highest
    ``epoch_N.pth``, else the only ``*.pth`` there (for example the released checkpoint from download.sh).
    """
    require_path(folder, "run folder", "train first, run `sh download.sh`, or pass --ckpt FILE", folder=True)
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(folder, "*.pth")))
    epochs = {int(m.group(1)): f for f in files if (m := _EPOCH_RE.match(f))}
    if load_epoch >= 0:
        chosen = epochs.get(load_epoch)
    else:
        chosen = ("best.pth" if "best.pth" in files else epochs[max(epochs)] if epochs
                  else files[0] if len(files) == 1 else None)
    if chosen is None:
        asked = f"no checkpoint for load_epoch {load_epoch}" if load_epoch >= 0 else "cannot choose a checkpoint"
        raise AHIQError(f"{folder}: {asked} among {files or 'no .pth files'} (epochs there: {sorted(epochs) or 'none'}"
                        "); pass --ckpt FILE or --load_epoch N")
    return os.path.join(folder, chosen)
