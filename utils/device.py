"""Device policy, in one place: which device a run uses by default, checks of the devices asked for, the CUDA
settings every entry point applies (cuDNN autotuning, TF32), and the autocast dtype of --amp."""
from __future__ import annotations

import contextlib
import logging
import os

import torch

from utils.errors import AHIQError


def default_gpu_ids() -> str:
    """The first GPU when this machine has one, else the CPU."""
    return "0" if torch.cuda.is_available() else "-1"


def default_workers() -> int:
    """DataLoader workers: the CPU cores this process may use, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores))


def missing_gpu(index: int) -> str | None:
    """Why GPU ``index`` cannot be used here, or None when it can."""
    if not torch.cuda.is_available():
        return "CUDA is not available here"
    count = torch.cuda.device_count()
    return f"no GPU {index} here (this machine has {count}: 0-{count - 1})" if index >= count else None


def configure_cuda(device: str, tf32: bool = True) -> None:
    """On CUDA: cuDNN autotuning (crop shapes are fixed, so it pays off; ``AHIQ_CUDNN_BENCHMARK=0`` skips it where a
    process is too short to repay it: the GPU check's children) and TF32 matrix products and convolutions
    (``tf32``: on by default, as in the official environment; off for strict fp32). The same flags for test.py,
    predict.py, train.py and the API, so their scores match. Nothing on the CPU."""
    if str(device).startswith("cuda"):
        torch.backends.cudnn.benchmark = os.environ.get("AHIQ_CUDNN_BENCHMARK", "1") != "0"
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(tf32)


def use_device(device: str) -> None:
    """A GPU run's device made the process's current CUDA device: the DataLoader's pin-memory thread, cuDNN handles
    and any tensor made without a device then live on it, not on GPU 0 (``--gpu_ids 3`` would otherwise also open a
    context on GPU 0). Entry points call it (test.py, predict.py, train.py); the API leaves the caller's current
    device alone. Nothing on the CPU."""
    if str(device).startswith("cuda"):
        torch.cuda.set_device(torch.device(device))


def check_device(device: str) -> None:
    """A device the API may be given: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` of a GPU this machine has."""
    text = str(device)
    if text != "cpu" and not (text == "cuda" or text.startswith("cuda:") and text[5:].isdigit()):
        raise AHIQError(f"device {device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
    problem = None if text == "cpu" else missing_gpu(torch.device(text).index or 0)
    if problem:
        raise AHIQError(f"device {device!r}: {problem}; use an existing GPU, or device='cpu'")


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # --amp_dtype's names


def amp_dtype(device: str, amp: bool, name: str) -> torch.dtype | None:
    """The autocast dtype of --amp/--amp_dtype ``name`` (bf16, fp16) on CUDA; None for fp32 (--amp on the CPU warns
    and runs fp32)."""
    if not amp:
        return None
    if not device.startswith("cuda"):
        logging.getLogger("ahiq").warning("--amp applies on CUDA only; running in fp32 on %s", device)
        return None
    return AMP_DTYPES[name]


def autocast(device: torch.device | str, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA when asked for; a no-op otherwise."""
    if amp_dtype is None or not str(device).startswith("cuda"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=amp_dtype)
