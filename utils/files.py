"""Atomic file writes: a temporary file in the same folder, fsync, then ``os.replace``.

A crash or a full disk never leaves a torn checkpoint or results file, and never destroys the previous one.
"""
from __future__ import annotations

import io
import os
import tempfile
from typing import Any

import torch


def atomic_write(path: str, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` in one step."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it the permissions of a normal file
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())
