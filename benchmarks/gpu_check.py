"""Everything only a GPU can check, in one run with the machine's own python3 (PyTorch, timm, OpenCV, SciPy; nothing
is installed), under one deadline (``--deadline``, 290 s: with start-up, under 5 minutes, so a rerun fits in the same
quarter hour). Every check judges numbers and can fail:

1. agreement: strict fp32 on CUDA (TF32 off) against the CPU (max relative score deviation <= 1e-4); TF32, bf16 and
   fp16 against strict fp32 on synthetic 288x288 pairs whose distortion spans none to strong (random backbones, so
   judged on what spreads even then, :data:`BOUNDS`): the patch maps' relative L2 error, the score error over the
   fp32 scores' range, and the pooling's exactness (the score against the fp64 pool of the path's own maps: a score
   pooled in bf16 fails it); the GEMM deformable convolution alone, at a 224 crop's 56x56 map with offsets of a few
   pixels, against torchvision's kernel in float64 (a sampling grid built in bf16 fails it).
2. deform: the deformable convolution micro-benchmark, GEMM against torchvision, fp32 / TF32 / bf16, forward and
   forward + backward (ms, medians); judged on the outputs agreeing with torchvision's.
3. train: ``torchrun --nproc_per_node 1`` training with the model wrapped in DDP on NCCL (``AHIQ_FORCE_DDP=1``), bf16;
   an fp16 run stopped by SIGTERM sent to every process of its job (as SLURM's cgroup tracking sends it), then
   ``--resume``d to the end.
4. test: ``test.py`` on CUDA (strict fp32) and on the CPU with that checkpoint: predictions within 1e-4 relative, the
   NTIRE package's output.txt equal to the CUDA predictions.
5. benchmark: ``benchmarks.benchmark`` (20-crop ensemble on 288x288, baseline vs project, fp32 and bf16; 1, 4 and 25
   distorted images per reference) with peak memory; the fast scores equal the baseline's and the project is faster.

Each check's line is printed and the JSON (``--out``, default results/gpu_check.json) rewritten as soon as it ends,
so a run stopped at a limit keeps every number it had. A check past the deadline is stopped (child processes killed
with every process of their job) and recorded as timed out; the temporary folder is removed also when the script is
stopped by SIGTERM, and a folder an earlier killed run left is removed at the start. The exit code is 1 when a check
failed. Without CUDA it says so in one line and exits with 2. ``--allow_cpu --quick`` runs the same script on the
CPU at toy sizes (its precision path under CPU autocast), to test the script.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator

import numpy as np
import torch

from utils.files import atomic_write, read_text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(tempfile.gettempdir(), "ahiq_gpu_check")  # a folder per run (its pid); a killed run's is removed

BOUNDS = {
    "cpu": 1e-4,  # max relative score deviation, strict fp32 on CUDA against the CPU (and test.py's)
    # Against strict fp32, random backbones. Measured under CPU autocast on the real architecture at crop 224
    # (8 pairs, 2 windows): bf16 f 1.8%, w 0.11%, score error 2.9% of the score range; fp16 0.25%, 0.014%, 0.9%.
    "maps_f": {"tf32": 1e-2, "bf16": 6e-2, "fp16": 1e-2},  # relative L2 of the patch score maps
    "maps_w": {"tf32": 2e-3, "bf16": 1e-2, "fp16": 2e-3},  # relative L2 of the patch weight maps
    "score_over_range": {"tf32": 3e-2, "bf16": 0.1, "fp16": 3e-2},  # max |score - fp32| / (fp32 max - min)
    "pool": 1e-5,  # max relative |score - fp64 pool of its own maps|: measured 1e-7; pooled in bf16: 3.5e-3
    # the deformable convolution alone (inputs in the compute dtype, as a bf16/fp16 layer hands them on) against
    # torchvision in float64, relative L2: measured on the CPU at 64 channels fp32 2.4e-6, bf16 0.72%, fp16 0.089%;
    # with the sampling grid in bf16, 9.0%
    "deform_fp32": 1e-5, "deform_bf16": 3e-2, "deform_fp16": 5e-3,
}


class Deadline(Exception):
    """The run's deadline passed during a check."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`Deadline` in this (main) thread after ``seconds``; children of a timed-out check are killed by
    their owner (:func:`run_child`)."""
    if seconds <= 0:
        raise Deadline("no time left before the deadline")

    def expire(_signum, _frame):
        raise Deadline(f"stopped at the deadline ({seconds:.0f} s left for it)")

    before = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def process_table() -> dict[int, tuple[int, int]]:
    """Every live process: pid -> (parent pid, session id), from /proc (empty where there is none)."""
    table = {}
    for entry in filter(str.isdigit, os.listdir("/proc") if os.path.isdir("/proc") else []):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":  # zombies are already gone
            table[int(entry)] = (int(fields[1]), int(fields[3]))
    return table


def job_pids(root: int) -> list[int]:
    """The processes of a job started as ``root`` in its own session: its session and every descendant (torchrun
    starts its ranks in sessions of their own; DataLoader workers change process group): what SLURM's cgroup
    tracking signals."""
    table = process_table()
    found = {pid for pid, (_, sid) in table.items() if sid == root} | ({root} if root in table else set())
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


def signal_job(proc: subprocess.Popen, sig: int) -> None:
    """``sig`` to every process of ``proc``'s job (:func:`job_pids`), each on its own, as SLURM's cgroup tracking
    sends it; where /proc cannot be read, to its process group."""
    for pid in job_pids(proc.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def run_child(cmd: list[str], log: str, env: dict | None = None) -> subprocess.Popen:
    """``cmd`` in its own session (as a scheduler starts a job), output to ``log``; registered so that a deadline or a
    stop of this script kills it with every process of its job (:func:`job_pids`)."""
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "AHIQ_CUDNN_BENCHMARK": "0", **(env or {})})
    CHILDREN.append(proc)
    return proc


CHILDREN: list[subprocess.Popen] = []


def kill_children() -> None:
    for proc in CHILDREN:
        if proc.poll() is None or job_pids(proc.pid):
            signal_job(proc, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    CHILDREN.clear()


def finish(proc: subprocess.Popen, log: str) -> tuple[int, str]:
    """Wait for a child (the deadline interrupts the wait) and return its exit code and output."""
    code = proc.wait()
    return code, read_text(log)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def make_data(folder: str, size: int) -> str:
    data = os.path.join(folder, "data")
    log = os.path.join(folder, "make_data.log")
    code, text = finish(run_child(python("-m", "tools.make_synthetic", "--out", data, "--n_refs", "4", "--size",
                                         str(size), "--split", "2", "1", "1"), log), log)
    if code:
        raise RuntimeError(text[-2000:])
    return data


def spread_pairs(n: int, size: int, crop: int, windows: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` synthetic pairs whose distortion grows from none to strong (noise, then blur), ``windows`` fixed windows
    each: scores that spread, even with random backbones."""
    import cv2

    from data.windows import crop_stack, fixed_windows
    rng = np.random.default_rng(0)
    dis, ref = [], []
    for i in range(n):
        r = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (0, 0), 2 + i % 5)
        level = i / max(n - 1, 1)
        d = r.astype(np.float32) + rng.normal(0, 60 * level, r.shape)
        d = cv2.GaussianBlur(np.clip(d, 0, 255).astype(np.uint8), (0, 0), 0.1 + 3 * level)
        chosen = fixed_windows(size, size, crop)[:windows]
        dis.append(crop_stack(d, chosen, crop))
        ref.append(crop_stack(r, chosen, crop))
    return torch.stack(dis), torch.stack(ref)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@contextlib.contextmanager
def precision(device: str, dtype: torch.dtype | None, tf32: bool) -> Iterator[None]:
    """Autocast to ``dtype`` on the device (CUDA, or the CPU where this script tests itself) and TF32 as asked;
    strict fp32 again afterwards."""
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        with torch.autocast(device, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False


def model_outputs(model, dis: torch.Tensor, ref: torch.Tensor, device: str, dtype: torch.dtype | None = None,
                  tf32: bool = False):
    """Scores and every crop's patch maps of the scoring path (:func:`engine.loop.score_crops`) at a precision."""
    from engine.loop import score_crops
    with precision(device, dtype, tf32):
        return score_crops(model, dis, ref, 50, dtype if device == "cuda" else None, keep_maps=True)


def pool_error(out) -> float:
    """Max relative difference between each score and the fp64 pool of the same path's own maps: the precision of
    the pooling alone (upstream rounding cancels out)."""
    f, w = out.f.double(), out.w.double()
    per_crop = (f * w).sum(dim=(1, 2)) / w.sum(dim=(1, 2))
    per_image = per_crop.view(len(out.scores), -1).mean(dim=1)
    return float(((out.scores.double() - per_image).abs() / per_image.abs()).max())


def judge_precision(name: str, got, fp32) -> dict:
    """The numbers of one precision against strict fp32 (:data:`BOUNDS`), and whether all are within bounds."""
    scores, base = got.scores.double(), fp32.scores.double()
    out = {"maps_f_rel_l2": rel_l2(got.f, fp32.f), "maps_w_rel_l2": rel_l2(got.w, fp32.w),
           "score_over_range": float((scores - base).abs().max() / (base.max() - base.min())),
           "max_rel_dev": float(((scores - base).abs() / base.abs()).max()), "pool_rel_err": pool_error(got)}
    out["ok"] = bool(out["maps_f_rel_l2"] <= BOUNDS["maps_f"][name] and out["maps_w_rel_l2"] <= BOUNDS["maps_w"][name]
                     and out["score_over_range"] <= BOUNDS["score_over_range"][name]
                     and out["pool_rel_err"] <= BOUNDS["pool"])
    return out


def deform_inputs(device: str, channels: int, side: int = 56, batch: int = 4):
    """A 224 crop's deformable-convolution input (56x56) with offsets of a few pixels, and its weights."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, channels, side, side, generator=g)
    offset = torch.randn(batch, 18, side, side, generator=g) * 3
    weight = torch.randn(channels, channels, 3, 3, generator=g) / (3 * channels ** 0.5)
    bias = torch.randn(channels, generator=g)
    return [t.to(device) for t in (x, offset, weight, bias)]


def deform_errors(device: str, channels: int, dtypes: tuple[str, ...]) -> dict:
    """Relative L2 error of the GEMM deformable convolution against torchvision's kernel in float64."""
    from torchvision.ops import deform_conv2d

    from models.deform import deform_conv2d_gemm
    x, offset, weight, bias = deform_inputs(device, channels)
    exact = deform_conv2d(x.double(), offset.double(), weight.double(), bias.double(), padding=(1, 1))
    out = {}
    for name in dtypes:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        given = (x, offset) if dtype is None else (x.to(dtype), offset.to(dtype))  # as a bf16/fp16 layer hands on
        with precision(device, dtype, False):
            got = deform_conv2d_gemm(*given, weight, bias, padding=1)
        out[f"deform_{name}_rel_l2"] = rel_l2(got.float(), exact)
    out["ok"] = all(out[f"deform_{n}_rel_l2"] <= BOUNDS[f"deform_{n}"] for n in dtypes)
    return out


def check_agreement(cfg: argparse.Namespace, model=None) -> dict:
    """Strict fp32 on the device against the CPU; TF32, bf16 and fp16 against strict fp32 (:func:`judge_precision`);
    the deformable convolution alone (:func:`deform_errors`)."""
    from engine.loop import score_crops
    from models import build_model

    n = 4 if cfg.quick else 48
    dis, ref = spread_pairs(n, cfg.size, cfg.crop, 2 if cfg.quick else 5)
    if model is None:
        torch.manual_seed(0)
        model = build_model(8, pretrained=False).eval()
    n_cpu = min(4, n)
    cpu = score_crops(model.cpu(), dis[:n_cpu], ref[:n_cpu], 20).scores.double()
    model.to(cfg.device)
    fp32 = model_outputs(model, dis, ref, cfg.device)
    out = {"images": n, "crops": dis.shape[1], "bounds": BOUNDS,
           "fp32_score_range": [float(fp32.scores.min()), float(fp32.scores.max())],
           "cpu_max_rel_dev": float(((fp32.scores[:n_cpu].double().cpu() - cpu).abs() / cpu.abs()).max())}
    ok = [out["cpu_max_rel_dev"] <= BOUNDS["cpu"]]
    kinds = (("tf32", None, True), ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False))
    for name, dtype, tf32 in kinds if cfg.device == "cuda" else kinds[1:2]:  # the CPU: bf16 autocast only
        out[name] = judge_precision(name, model_outputs(model, dis, ref, cfg.device, dtype, tf32), fp32)
        ok.append(out[name]["ok"])
    out["deform"] = deform_errors(cfg.device, 64 if cfg.quick else 768,
                                  ("fp32", "bf16", "fp16") if cfg.device == "cuda" else ("fp32", "bf16"))
    out["ok"] = bool(all(ok) and out["deform"]["ok"])
    return out


def check_compiled(cfg: argparse.Namespace, keep: Callable[[dict], None]) -> dict:
    """Last, as compiling takes a while (inductor on CUDA; aot_eager where this script tests itself on the CPU):
    test.py --compile_model --amp against strict fp32, judged with bf16's bounds (:func:`judge_precision`); then its
    images/s against the same path uncompiled, and the bf16 training step with --compile_mode reduce-overhead
    against the eager step (benchmarks/benchmark.py); each part handed to ``keep`` as it ends."""
    from benchmarks.benchmark import compiled_speed, compiled_step
    from models import build_model

    backend = "inductor" if cfg.device == "cuda" else "aot_eager"
    n = 4 if cfg.quick else 48
    dis, ref = spread_pairs(n, cfg.size, cfg.crop, 2 if cfg.quick else 5)
    torch.manual_seed(0)
    model = build_model(8, pretrained=False).eval().to(cfg.device)
    compiled = copy.deepcopy(model).for_scoring(amp_dtype=torch.bfloat16, compile_backend=backend)
    out = judge_precision("bf16", model_outputs(compiled, dis, ref, cfg.device, torch.bfloat16),
                          model_outputs(model, dis, ref, cfg.device))
    out["backend"] = backend
    keep(out)
    del compiled
    speed = argparse.Namespace(images=n, crops_per_forward=50, device=cfg.device, repeats=2)
    with precision(cfg.device, torch.bfloat16, False):  # on CUDA the scoring path's own autocast; the CPU's here
        out.update(compiled_speed(speed, model, dis, ref, backend))
    keep(out)
    pairs = [t.flatten(0, 1)[:4].to(cfg.device).float() / 255 for t in (dis, ref)]
    out.update(compiled_step(model, *pairs, torch.rand(4, device=cfg.device), 2, cfg.device, backend))
    return out


def check_deform(cfg: argparse.Namespace) -> dict:
    """GEMM against torchvision's deformable convolution at a 224 crop's map (768 channels, 56x56, a batch of 10
    crops): median ms of the forward and of forward + backward (offsets and weights, as in training) in fp32, TF32
    and bf16 (torchvision's kernel has no bf16: it runs fp32 under autocast); judged on the outputs agreeing."""
    from torchvision.ops import deform_conv2d

    from models.deform import deform_conv2d_gemm
    channels, batch, repeats = (64, 2, 2) if cfg.quick else (768, 10, 10)
    x, offset, weight, bias = deform_inputs(cfg.device, channels, batch=batch)
    offset.requires_grad_(True)
    weight.requires_grad_(True)
    impls = {"gemm": lambda: deform_conv2d_gemm(x, offset, weight, bias, padding=1),
             "torchvision": lambda: deform_conv2d(x, offset, weight, bias, padding=(1, 1))}
    out: dict = {"shape": [batch, channels, 56, 56]}
    modes = (("fp32", None, False), ("tf32", None, True), ("bf16", torch.bfloat16, False))
    for mode, dtype, tf32 in modes if cfg.device == "cuda" else modes[:1] + modes[2:]:
        for impl, fn in impls.items():
            with precision(cfg.device, dtype, tf32):
                with torch.no_grad():
                    forward, result = timed(fn, cfg.device, repeats)
                backward, _ = timed(lambda fn=fn: fn().float().square().mean().backward(), cfg.device, repeats)
            out[f"{impl}_{mode}"] = {"forward_ms": forward * 1e3, "forward_backward_ms": backward * 1e3,
                                     "dtype": str(result.dtype)}
            if impl == "gemm":
                gemm = result.float()
            else:
                out[f"{impl}_{mode}"]["gemm_rel_l2"] = rel_l2(gemm, result.float())
    bound = {"fp32": BOUNDS["deform_fp32"], "tf32": 5e-3, "bf16": BOUNDS["deform_bf16"]}
    out["ok"] = all(v["gemm_rel_l2"] <= bound[k.split("_")[1]] for k, v in out.items() if k.startswith("torchvision_"))
    return out


def timed(fn: Callable[[], object], device: str, repeats: int) -> tuple[float, object]:
    from benchmarks.benchmark import timed as bench_timed
    return bench_timed(fn, device, repeats)


def train_args(cfg: argparse.Namespace, data: str, ckpts: str, name: str, *extra: str) -> list[str]:
    return ["--train_ref_path", f"{data}/ref", "--train_dis_path", f"{data}/dis", "--train_list",
            f"{data}/train.txt", "--val_ref_path", f"{data}/ref", "--val_dis_path", f"{data}/dis", "--val_list",
            f"{data}/val.txt", "--checkpoints_dir", ckpts, "--name", name, "--no_pretrained", "--crop_size",
            str(cfg.crop), "--gpu_ids", cfg.gpu_ids, "--num_workers", "2", "--num_avg_val", "1", "--batch_size",
            "2", "--save_interval", "100", *extra]


def torchrun(args: list[str], log: str) -> subprocess.Popen:
    """train.py under ``torchrun --nproc_per_node 1`` with the model wrapped in DDP on the GPU's backend
    (AHIQ_FORCE_DDP=1: a process group of one), in its own session as a scheduler starts it."""
    return run_child(python("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "train.py", *args),
                     log, {"AHIQ_FORCE_DDP": "1", "OMP_NUM_THREADS": "4"})


def check_train(cfg: argparse.Namespace, data: str, folder: str) -> dict:
    """bf16 training through torchrun with DDP (NCCL on the GPU); an fp16 run stopped by SIGTERM sent to every
    process of its job mid-epoch (torchrun, the rank, the rank's DataLoader workers), then --resume'd to the
    end: exit codes, losses, the saved loss scale, the log's message."""
    ckpts = os.path.join(folder, "ckpts")
    os.makedirs(ckpts, exist_ok=True)
    out: dict = {}
    backend = "nccl" if cfg.device == "cuda" else "gloo"
    log = os.path.join(ckpts, "bf16.log")
    code, text = finish(torchrun(train_args(cfg, data, ckpts, "ddp_bf16", "--amp", "--n_epoch", "2"), log), log)
    last = os.path.join(ckpts, "ddp_bf16", "last.pth")
    loss = float(torch.load(last, weights_only=True)["loss"]) if os.path.isfile(last) else float("nan")
    out["ddp_bf16"] = {"exit_code": code, "loss": loss, "ddp_backend_logged": f"DDP over {backend}" in text}
    steps = re.findall(r"epoch \d+: train loss \S+ \((\d+) steps, ([\d.]+) ms a step\)", text)
    if steps:  # the second epoch's: the first holds cuDNN's and the allocator's warm-up
        out["ddp_bf16"].update(steps=int(steps[-1][0]), step_ms=float(steps[-1][1]))
    if not (code == 0 and np.isfinite(loss) and out["ddp_bf16"]["ddp_backend_logged"]):
        out["ddp_bf16"]["log"] = text[-1500:]
    args = train_args(cfg, data, ckpts, "fp16_resume", "--amp", "--amp_dtype", "fp16", "--n_epoch", "2")
    log = os.path.join(ckpts, "fp16_stop.log")
    proc = torchrun(args, log)
    while proc.poll() is None and "loss=" not in read_text(log):
        time.sleep(0.1)
    signal_job(proc, signal.SIGTERM)  # every process of the job, as SLURM's cgroup tracking sends it
    _, stopped = finish(proc, log)
    state = torch.load(os.path.join(ckpts, "fp16_resume", "last.pth"), weights_only=True)
    resumed_log = os.path.join(ckpts, "fp16_resume.log")
    resumed, _ = finish(torchrun(args + ["--resume"], resumed_log), resumed_log)
    final = torch.load(os.path.join(ckpts, "fp16_resume", "last.pth"), weights_only=True)
    fp16_used = cfg.device == "cuda"  # on the CPU --amp runs fp32: no loss scale to save
    r = out["sigterm_resume"] = {
        "stopped_message": "stopped by SIGTERM" in stopped and "continue with --resume" in stopped,
        "workers_survived": "DataLoader worker" not in stopped, "stopped_at": [state["train_state"]["epoch"],
                                                                            state["train_state"]["step"]],
        "scaler_saved": bool(state.get("scaler_state_dict")) == fp16_used, "resume_exit_code": resumed,
        "final_epoch": final["train_state"]["epoch"], "loss": float(final["loss"])}
    r["ok"] = bool(r["stopped_message"] and r["workers_survived"] and r["scaler_saved"] and resumed == 0
                   and r["final_epoch"] == 2 and np.isfinite(r["loss"]))
    if not r["ok"]:
        r["log"] = (stopped + read_text(resumed_log))[-2000:]
    out["ok"] = bool(out["ddp_bf16"]["exit_code"] == 0 and np.isfinite(loss) and out["ddp_bf16"][
        "ddp_backend_logged"] and r["ok"])
    return out


def check_test(cfg: argparse.Namespace, data: str, folder: str) -> dict:
    """test.py on CUDA (strict fp32) and on the CPU with a trained checkpoint: the predictions agree within
    1e-4 relative, and the NTIRE package's output.txt holds the CUDA predictions."""
    ckpt = next((p for p in (os.path.join(folder, "ckpts", n, "last.pth") for n in ("fp16_resume", "ddp_bf16"))
                 if os.path.isfile(p)), None)
    if ckpt is None:
        return {"ok": False, "error": "no checkpoint: the train check did not write one"}
    package = os.path.join(folder, "submission")
    common = ["test.py", "--test_ref_path", f"{data}/ref", "--test_dis_path", f"{data}/dis", "--test_list",
              f"{data}/test.txt", "--ckpt", ckpt, "--no_pretrained", "--n_ensemble", "2", "--no_tf32",
              "--checkpoints_dir", folder]
    gpu_log, cpu_log = os.path.join(folder, "test_gpu.log"), os.path.join(folder, "test_cpu.log")
    gpu = run_child(python(*common, "--gpu_ids", cfg.gpu_ids, "--name", "on_gpu", "--submission", package), gpu_log)
    cpu = run_child(python(*common, "--gpu_ids", "-1", "--name", "on_cpu"), cpu_log)  # both at once
    (gpu_code, gpu_text), (cpu_code, cpu_text) = finish(gpu, gpu_log), finish(cpu, cpu_log)
    out = {"gpu_exit_code": gpu_code, "cpu_exit_code": cpu_code}
    if gpu_code or cpu_code:
        out.update(ok=False, log=(gpu_text + cpu_text)[-2000:])
        return out

    def scores(path: str) -> np.ndarray:
        return np.array([float(line.split(",")[1]) for line in read_text(path).splitlines()])

    on_gpu, on_cpu = scores(os.path.join(folder, "on_gpu", "results.txt")), scores(
        os.path.join(folder, "on_cpu", "results.txt"))
    out["images"] = len(on_gpu)
    out["max_rel_dev"] = float(np.max(np.abs(on_gpu - on_cpu) / np.abs(on_cpu)))
    out["package_equals_gpu"] = bool(np.array_equal(scores(os.path.join(package, "output.txt")), on_gpu))
    with zipfile.ZipFile(os.path.join(package, "submission.zip")) as zf:
        out["zip_members"] = sorted(zf.namelist())
    out["ok"] = (out["max_rel_dev"] <= BOUNDS["cpu"] and out["package_equals_gpu"]
                 and out["zip_members"] == ["output.txt", "readme.txt"] and len(on_gpu) > 0)
    return out


WHEN_TIME_ALLOWS = {"compiled"}  # last, measured with the time the others leave: cut by the deadline, it is reported
# (with the parts it kept), not failed; finished outside its bounds, it fails as any check does
GOALS = {"images_per_s": 150, "train_hours": 3.0}  # test.py end to end in bf16; 200 PIPAL epochs of bf16 steps


def check_benchmark(cfg: argparse.Namespace, keep: Callable[[dict], None]) -> dict:
    """The benchmark (20-crop ensemble on 288x288; 1, 4 and 25 distorted images per reference, the baseline
    measured once; whole test.py processes on 25 images of one reference, fp32 and bf16), with peak memory; each
    section handed to ``keep`` as it ends. Judged: fast and shared scores equal the baseline's, and the project is
    faster than the official-style baseline. The goals are judged apart (:func:`judge_goals`)."""
    from benchmarks.benchmark import main as benchmark
    args = ["--device", cfg.device, "--images", "25", "--n_ensemble", "20", "--repeats", "2", "--per_reference", "1",
            "4", "25", "--process", "25"]
    if cfg.quick:
        args = ["--device", cfg.device, "--images", "2", "--size", str(cfg.size), "--crop", str(cfg.crop),
                "--n_ensemble", "3", "--repeats", "1", "--train_batch", "2", "--per_reference", "1", "2"]
    out = benchmark(args, on_section=keep)
    out["ok"] = bool(out["test"]["fp32_max_rel_dev"] < 1e-4 and all(r["max_rel_dev"] < 1e-4 for r in out[
        "per_reference"] if r["amp"] == "fp32") and (cfg.quick or out["test"]["fp32_speedup"] > 1))
    return out


def judge_goals(results: dict) -> dict:
    """The two speed goals against what this run measured in bf16: test.py's images/s end to end (decoding
    included, start-up not; 20 crops, 25 images per reference) and 200 PIPAL epochs of training steps (validation
    and saves not counted). Judged on CUDA only; a number the run did not reach is None (not met)."""
    bench = results["checks"].get("benchmark", {})
    rate = (bench.get("process") or {}).get("bf16_scoring_images_per_s")
    hours = (bench.get("train") or {}).get("pipal_200_epochs_steps_hours")
    out = {"images_per_s": rate, "images_per_s_goal": GOALS["images_per_s"],
           "images_per_s_met": rate is not None and rate >= GOALS["images_per_s"],
           "train_hours": hours, "train_hours_goal": GOALS["train_hours"],
           "train_hours_met": hours is not None and hours <= GOALS["train_hours"]}
    if results["device"] == "cpu":
        out.update(ok=True, note="not judged on the CPU")
    else:
        out["ok"] = out["images_per_s_met"] and out["train_hours_met"]
    return out


def line(name: str, res: dict) -> str:
    """One check's line: status, time and its main numbers."""
    status = "ok" if res.get("ok") else "TIMED OUT" if res.get("timed_out") else "FAILED"
    parts = [f"{name:<10} {status:<9} ({res.get('seconds', 0):.0f} s)"]
    if name == "agreement" and "cpu_max_rel_dev" in res:
        parts.append(f"fp32 vs CPU {res['cpu_max_rel_dev']:.1e}")
        parts += [f"{k}: maps f {res[k]['maps_f_rel_l2']:.1e} w {res[k]['maps_w_rel_l2']:.1e}, score/range "
                  f"{res[k]['score_over_range']:.1e}, pool {res[k]['pool_rel_err']:.0e}"
                  for k in ("tf32", "bf16", "fp16") if k in res]
        parts.append("deform vs torchvision " + ", ".join(f"{k[7:-7]} {v:.1e}" for k, v in res["deform"].items()
                                                         if k.endswith("_rel_l2")))
    if name == "deform":
        parts += [f"{k}: fwd {v['forward_ms']:.1f} ms, fwd+bwd {v['forward_backward_ms']:.1f} ms"
                  for k, v in res.items() if isinstance(v, dict) and "forward_ms" in v]
    if name == "compiled" and "score_over_range" in res:
        parts.append(f"{res['backend']}, bf16: maps f {res['maps_f_rel_l2']:.1e} w {res['maps_w_rel_l2']:.1e}, "
                     f"score/range {res['score_over_range']:.1e}")
        if "bf16_compiled_images_per_s" in res:
            parts.append(f"scoring {res['bf16_compiled_images_per_s']:.4g} images/s against "
                         f"{res['bf16_images_per_s']:.4g} uncompiled ({res['compile_warm_up_s']:.0f} s to compile)")
        if "bf16_compiled_step_ms" in res:
            parts.append(f"bf16 step {res['bf16_compiled_step_ms']:.1f} ms against {res['bf16_step_ms']:.1f} ms "
                         "(--compile_mode reduce-overhead)")
    if name == "test" and "max_rel_dev" in res:
        parts.append(f"test.py CUDA vs CPU on {res['images']} images: max rel. dev {res['max_rel_dev']:.1e}")
    if name == "goals":
        def said(value, unit, goal, met, sign):
            shown = "not measured" if value is None else f"{value:.3g} {unit}"
            return f"{shown} (goal {sign} {goal:g} {unit}: {'met' if met else 'MISSED'})"
        parts.append("test.py bf16 end to end " + said(res["images_per_s"], "images/s", res["images_per_s_goal"],
                                                         res["images_per_s_met"], ">=") + "; 200 PIPAL epochs "
                     + said(res["train_hours"], "h", res["train_hours_goal"], res["train_hours_met"], "<="))
        if res.get("note"):
            parts.append(res["note"])
    if name == "train" and "step_ms" in res.get("ddp_bf16", {}):
        parts.append(f"bf16 DDP step {res['ddp_bf16']['step_ms']:.1f} ms ({res['ddp_bf16']['steps']} steps)")
    if name == "benchmark" and "device" in res:  # the benchmark's own table, as far as it got
        from benchmarks.benchmark import table
        parts += table(res).splitlines()[2:]
    if "error" in res:
        parts.append(res["error"])
    return "\n    ".join(parts)


def remove_leftovers() -> None:
    """The folders of earlier runs killed outright (SIGKILL: no clean-up ran): those whose process is gone."""
    for name in os.listdir(WORK) if os.path.isdir(WORK) else []:
        try:
            os.kill(int(name), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(os.path.join(WORK, name), ignore_errors=True)
        except PermissionError:  # another user's live run
            pass


def stop_on_sigterm(_signum, _frame) -> None:
    raise KeyboardInterrupt("SIGTERM")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(REPO, "results", "gpu_check.json"),
                   help="the JSON written after every check (on a lent machine: a folder whose files come back, "
                        "e.g. --out $OUT/gpu_check.json)")
    p.add_argument("--only", nargs="*", default=["benchmark", "agreement", "deform", "train", "test", "compiled"],
                   help="the checks, in this order (the benchmark first: its numbers are what a cut run most needs; "
                        "the compiled paths last: compiling takes a while)")
    p.add_argument("--deadline", type=float, default=290, help="seconds for the whole run (start-up excluded)")
    p.add_argument("--allow_cpu", action="store_true", help="run on the CPU (to test this script)")
    p.add_argument("--quick", action="store_true", help="toy sizes (to test this script)")
    cfg = p.parse_args(argv)
    if not torch.cuda.is_available() and not cfg.allow_cpu:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine",
              file=sys.stderr)
        return 2
    cfg.device, cfg.gpu_ids = ("cuda", "0") if torch.cuda.is_available() else ("cpu", "-1")
    cfg.size, cfg.crop = (40, 32) if cfg.quick else (288, 224)
    started = time.perf_counter()
    end = started + cfg.deadline
    results = {"device": torch.cuda.get_device_name() if cfg.device == "cuda" else "cpu", "torch": torch.__version__,
               "cuda": torch.version.cuda, "deadline_s": cfg.deadline, "checks": {}}
    print(f"GPU check on {results['device']} (torch {results['torch']}, CUDA {results['cuda']}), deadline "
          f"{cfg.deadline:.0f} s", flush=True)
    remove_leftovers()
    folder = os.path.join(WORK, str(os.getpid()))
    os.makedirs(folder)
    before = signal.signal(signal.SIGTERM, stop_on_sigterm)

    def save() -> None:  # every number kept as it comes
        atomic_write(cfg.out, json.dumps(results, indent=2, default=str))

    def keep(name: str, partial: dict) -> None:  # a check's sections so far, written as each ends
        results["checks"][name] = {**partial, "ok": False, "partial": True}
        save()

    def so_far(name: str) -> dict:  # what a check that did not end had kept
        return {k: v for k, v in results["checks"].get(name, {}).items() if k != "partial"}

    try:
        state: dict = {}
        checks: dict[str, Callable[[], dict]] = {
            "agreement": lambda: check_agreement(cfg), "deform": lambda: check_deform(cfg),
            "train": lambda: check_train(cfg, state.setdefault("data", make_data(folder, cfg.size)), folder),
            "test": lambda: check_test(cfg, state.setdefault("data", make_data(folder, cfg.size)), folder),
            "benchmark": lambda: check_benchmark(cfg, lambda part: keep("benchmark", part)),
            "compiled": lambda: check_compiled(cfg, lambda part: keep("compiled", part))}
        for name in cfg.only:
            start = time.perf_counter()
            try:
                with time_limit(end - start):
                    res = checks[name]()
            except Deadline as err:  # the sections it finished stay
                res = {**so_far(name), "ok": False, "timed_out": True, "error": str(err)}
            except Exception as err:  # one failed check must not hide the others' numbers (nor its own so far)
                res = {**so_far(name), "ok": False, "error": f"{type(err).__name__}: {err}",
                       "traceback": traceback.format_exc()}
            finally:
                kill_children()
            res["seconds"] = time.perf_counter() - start
            results["checks"][name] = res
            results["seconds"] = time.perf_counter() - started
            save()
            print("  " + line(name, res), flush=True)
        if "benchmark" in cfg.only:
            results["checks"]["goals"] = judge_goals(results)
            save()
            print("  " + line("goals", results["checks"]["goals"]), flush=True)
    except KeyboardInterrupt:
        print(f"gpu_check: stopped; the numbers so far are in {cfg.out}", file=sys.stderr)
        return 130
    finally:
        kill_children()
        signal.signal(signal.SIGTERM, before)
        shutil.rmtree(folder, ignore_errors=True)
    print(f"done in {results['seconds']:.0f} s; written: {cfg.out}")
    return 0 if all(r.get("ok") or (name in WHEN_TIME_ALLOWS and r.get("timed_out"))
                    for name, r in results["checks"].items()) else 1


if __name__ == "__main__":
    sys.exit(main())
