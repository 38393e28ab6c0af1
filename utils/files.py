"""Safe files: atomic writes (a temporary file in the same folder, fsync, then ``os.replace``), the cleanup of
temporary files a killed process left behind, and the lock that gives a run folder one owner.

A crash, a kill or a full disk never leaves a torn checkpoint or results file, and never destroys the previous one;
a failed write says which file and why in one line.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import io
import json
import os
import tempfile
from typing import Any

import torch

from utils.errors import AHIQError

TMP_PREFIX = ".tmp-"
# A run folder's own files, named once here: what writes them uses these names, and what must never replace them
# (test.py's --test_file_name) is checked against them (:func:`is_run_file`).
LOG_FILE, METRICS_FILE, METRICS_FIGURE, LOCK_FILE = "log.txt", "metrics.jsonl", "metrics.png", ".lock"
TENSORBOARD_DIR, OPTIONS_PREFIX = "tensorboard", "opt_"
RUN_FILE_EXTENSIONS = (".pth", ".pt", ".json", ".jsonl", ".png", ".lock")  # checkpoints, options, logs, figures


def is_run_file(name: str) -> bool:
    """Whether a plain file name could be (or replace) one of a run folder's own files."""
    stem, ext = os.path.splitext(name)
    return (ext.lower() in RUN_FILE_EXTENSIONS or name in (LOG_FILE, METRICS_FILE, METRICS_FIGURE, LOCK_FILE,
                                                          TENSORBOARD_DIR) or stem.startswith(OPTIONS_PREFIX))


def atomic_write(path: str, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` in one step; on failure the old file is untouched and no temporary is left."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it the permissions of a normal file
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        what = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or type(err).__name__)
        raise AHIQError(f"{path}: cannot be written ({what}); nothing was replaced: free space or choose a writable "
                        "folder, then run the same command again") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def file_error(path: str, err: OSError, doing: str) -> AHIQError:
    """A failed operation on a file the project itself reads or writes, as a one-line error naming it."""
    what = "the disk is full" if err.errno == errno.ENOSPC else (err.strerror or type(err).__name__)
    return AHIQError(f"{path}: cannot be {doing} ({what}); check the path, its permissions and the free space")


def require_path(path: str, what: str, fix: str, folder: bool = False) -> str:
    """``path`` when it is an existing file (``folder``: an existing folder); else one line: ``{path}: {what} not
    found; {fix}``: the one existence check of the files and folders a user names (label lists, images, image folders,
    checkpoints, weight files, split files)."""
    if not (os.path.isdir(path) if folder else os.path.isfile(path)):
        raise AHIQError(f"{path}: {what} not found; {fix}")
    return path


def read_bytes(path: str) -> bytes:
    """A file's bytes; a failure is one line naming the file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise file_error(path, err, "read") from None


def read_text(path: str) -> str:
    """A text file as UTF-8 (a BOM is dropped); another encoding is a one-line error naming the file and line."""
    data = read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise AHIQError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the file as UTF-8") \
            from None


def append_text(path: str, text: str, sync: bool = False) -> None:
    """Append ``text`` to ``path`` (made if missing), flushed (``sync``: and fsynced) before it returns, so a killed
    process keeps what was appended; a failure (a full disk) is one line naming the file, and what was appended
    before stays."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            if sync:
                os.fsync(f.fileno())
    except OSError as err:
        raise file_error(path, err, "written") from None


def read_json(path: str, what: str, fix: str, fmt: str | None = None) -> dict:
    """A JSON object the project wrote (``fmt``: its ``"format"`` value must be this), or one line naming the file,
    ``what`` it should be and the ``fix``."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8-sig"))
    except (OSError, ValueError) as err:
        doc, problem = None, f"cannot be read as {what} ({getattr(err, 'strerror', None) or err})"
    else:
        problem = f"not {what}" + (f" (format {fmt})" if fmt else " (a JSON object)")
    if not isinstance(doc, dict) or (fmt is not None and doc.get("format") != fmt):
        raise AHIQError(f"{path}: {problem}; {fix}")
    return doc


def atomic_torch_save(obj: Any, path: str) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete the temporary files of interrupted atomic writes in ``folder`` (call it while owning the folder)."""
    stale = glob.glob(os.path.join(glob.escape(folder), TMP_PREFIX + "*"))
    for path in stale:
        os.unlink(path)
    return stale


class Lock:
    """An exclusive lock on the file ``path``, held until :meth:`release` or the end of the process.

    It is a kernel lock (``flock``): a crashed or killed process releases it at once, so it never stays stuck. A
    second process asking for it stops immediately with the one-line message ``busy``.
    """

    def __init__(self, path: str, busy: str) -> None:
        self.path = path
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as err:
            raise file_error(path, err, "created") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise AHIQError(busy) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class FolderLock(Lock):
    """A run folder's one owner: the :class:`Lock` of ``.lock`` inside it, for the life of the run."""

    def __init__(self, folder: str, what: str = "a run") -> None:
        path = os.path.join(folder, LOCK_FILE)
        for own in (path, os.path.join(folder, LOG_FILE)):  # never written through a link to elsewhere
            if os.path.islink(own):
                raise AHIQError(f"{own}: is a symbolic link; the run folder's own files are not written through "
                                "links: remove it (it is recreated)")
        super().__init__(path, f"{folder}: another process is using this run folder ({what}); wait for it to end or "
                               "choose another --name")
