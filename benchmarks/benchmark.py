"""Benchmark this project's AHIQ against the official-style computation, on the same inputs and weights, in one run.

Baseline (benchmarks/official_style.py): full timm backbones with forward hooks, fp32, the distorted and the
reference image through each backbone one after the other, one crop index at a time over a batch of images (the
official test loop); in training, autograd through both backbones (the official code never freezes them).
Project: the model, scoring loop and training step that train.py and test.py use.

Reports test throughput (images/s with an n-crop ensemble), training throughput (pairs/s), CUDA peak memory, the
speed-up ratios, and how far each fast mode's scores are from the fp32 baseline. Weights are random (the cost does
not depend on them). Example: ``python -m benchmarks.benchmark --device cpu --images 2 --n_ensemble 5``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import timm
import torch
from safetensors.torch import save_file
from scipy import stats

from benchmarks.official_style import OfficialStyleBackbones, official_forward, reference_scores
from data.windows import crop_tensor_stack, crop_windows
from engine.loop import ChunkSize, ReferenceCache, score_batch, score_crops
from models import RESNET_TAG, VIT_TAGS, build_model
from options.defaults import CROPS_PER_FORWARD, N_ENSEMBLE, SEED

PIPAL_TRAIN_PAIRS = 23200  # PIPAL's training list: the 200-epoch estimate's steps


def timed(fn: Callable[[], object], device: str, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def peak_memory(fn: Callable[[], object], device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2 ** 30


def make_models(patch: int, device: str, folder: str):
    torch.manual_seed(0)
    vit = timm.create_model(VIT_TAGS[patch], pretrained=False)
    resnet = timm.create_model(RESNET_TAG, pretrained=False)
    files = os.path.join(folder, "vit.safetensors"), os.path.join(folder, "resnet.pth")
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, files[0])
    torch.save(resnet.state_dict(), files[1])
    model = build_model(patch, pretrained=False, vit_weights=files[0], resnet_weights=files[1]).to(device).eval()
    baseline = OfficialStyleBackbones(patch, *files)
    baseline.vit.to(device)
    baseline.resnet.to(device)
    return model, baseline


def crops(images: torch.Tensor, n: int, crop: int, seed: int) -> torch.Tensor:
    """(N, K, 3, crop, crop) uint8 crop stacks with test.py's windows (image i is named 'img{i}')."""
    h, w = images.shape[-2:]
    return torch.stack([crop_tensor_stack(img, crop_windows(h, w, crop, n, seed, i), crop)
                        for i, img in enumerate(images)])


def baseline_scores(baseline, heads, dis: torch.Tensor, ref: torch.Tensor, batch: int, device: str) -> np.ndarray:
    """The official test loop: for each crop index, batches of images, summed and divided by the crop count."""
    n, k = dis.shape[:2]
    total = torch.zeros(n)
    for idx in range(k):
        for start in range(0, n, batch):
            d = dis[start:start + batch, idx].to(device).float() / 255
            r = ref[start:start + batch, idx].to(device).float() / 255
            total[start:start + batch] += reference_scores(baseline, *heads, d, r).float().cpu().view(-1)
    return (total / k).numpy()


def project_scores(model, dis, ref, crops_per_forward: int, amp_dtype=None) -> np.ndarray:
    return score_crops(model, dis, ref, crops_per_forward, amp_dtype).scores.cpu().double().numpy()


def train_step_fn(forward: Callable, params: list, dis, ref, label) -> Callable[[], float]:
    optimizer = torch.optim.Adam(params, lr=1e-4, weight_decay=1e-5)

    def step() -> float:
        loss = torch.nn.functional.mse_loss(forward(dis, ref).float().view(-1), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def per_reference(args: argparse.Namespace, model, baseline_images_per_s: float, device: str, k: int,
                  amp_dtype=None) -> dict:
    """Scoring with k distorted images per reference: the shared path (each (reference, window) computed once, as
    test.py does) against the baseline, which recomputes the reference for every pair, so its rate does not depend
    on k: it is measured once (the test benchmark) and reused. The shared scores are checked against the project's
    unshared scores of the same crops."""
    g = torch.Generator().manual_seed(2)
    n = max(k, args.images // k * k)
    shape = (3, args.size, args.size)
    refs = torch.randint(0, 256, (n // k, *shape), generator=g, dtype=torch.uint8)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    windows = [crop_windows(args.size, args.size, args.crop, args.n_ensemble, SEED, r) for r in range(n // k)]
    ref_crops = torch.stack([crop_tensor_stack(img, windows[r], args.crop) for r, img in enumerate(refs)])
    dis = torch.stack([crop_tensor_stack(img, windows[i // k], args.crop) for i, img in enumerate(images)])
    ref = ref_crops[[i // k for i in range(n)]]
    keys = [[(i // k, j) for j in range(args.n_ensemble)] for i in range(n)]

    def batch_scores(s: int, cache: ReferenceCache, chunk: ChunkSize) -> torch.Tensor:
        rows = slice(s, s + args.batch)
        counts = [args.n_ensemble] * len(keys[rows])
        return score_batch(model, dis[rows].flatten(0, 1), ref[rows].flatten(0, 1), counts,
                           [key for row in keys[rows] for key in row], cache, chunk, amp_dtype).scores

    def shared() -> np.ndarray:
        cache, chunk = ReferenceCache(Counter(row[0][0] for row in keys)), ChunkSize(args.crops_per_forward)
        return torch.cat([batch_scores(s, cache, chunk) for s in range(0, n, args.batch)]).double().numpy()

    t_shared, s_shared = timed(shared, device, args.repeats)
    s_alone = project_scores(model, dis, ref, args.crops_per_forward, amp_dtype)
    return {"per_reference": k, "images": n, "baseline_images_per_s": baseline_images_per_s,
            "shared_images_per_s": n / t_shared, "speedup": n / t_shared / baseline_images_per_s,
            "max_rel_dev": float(np.max(np.abs(s_shared - s_alone) / np.abs(s_alone))),
            "amp": str(amp_dtype) if amp_dtype else "fp32"}


def run(args: argparse.Namespace, on_section: Callable[[dict], None] = lambda out: None) -> dict:
    device = args.device
    g = torch.Generator().manual_seed(1)
    images_dis = torch.randint(0, 256, (args.images, 3, args.size, args.size), generator=g, dtype=torch.uint8)
    images_ref = torch.randint(0, 256, (args.images, 3, args.size, args.size), generator=g, dtype=torch.uint8)
    dis, ref = crops(images_dis, args.n_ensemble, args.crop, SEED), crops(images_ref, args.n_ensemble, args.crop, SEED)
    with tempfile.TemporaryDirectory() as folder:
        model, baseline = make_models(args.patch_size, device, folder)
        return measure(args, model, baseline, dis, ref, g, folder, on_section)


def measure(args: argparse.Namespace, model, baseline, dis: torch.Tensor, ref: torch.Tensor, g: torch.Generator,
            folder: str, on_section: Callable[[dict], None] = lambda out: None) -> dict:
    """Every section's numbers; ``on_section(out)`` after each (the GPU check keeps them as they come). Scoring uses
    the model as test.py's scorer prepares it (:meth:`models.AHIQ.for_scoring`), training the model as built."""
    device = args.device
    scoring = {None: copy.deepcopy(model).for_scoring()}
    if device.startswith("cuda"):
        scoring[torch.bfloat16] = copy.deepcopy(model).for_scoring(amp_dtype=torch.bfloat16)
    heads = (dict(model.deform_net.named_parameters()), dict(model.regressor.named_parameters()))
    frozen = {k: {n: p.detach() for n, p in sd.items()} for k, sd in zip(("d", "r"), heads)}
    out: dict = {"device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
                 "images": args.images, "n_ensemble": args.n_ensemble, "size": args.size, "crop": args.crop}

    t_base, s_base = timed(lambda: baseline_scores(baseline, (frozen["d"], frozen["r"]), dis, ref, args.batch, device),
                           device, args.repeats)
    t_fast, s_fast = timed(lambda: project_scores(scoring[None], dis, ref, args.crops_per_forward), device,
                           args.repeats)
    out["test"] = {"baseline_images_per_s": args.images / t_base, "fp32_images_per_s": args.images / t_fast,
                   "fp32_speedup": t_base / t_fast,
                   "fp32_max_rel_dev": float(np.max(np.abs(s_fast - s_base) / np.abs(s_base)))}
    out["test"]["baseline_peak_gib"] = peak_memory(
        lambda: baseline_scores(baseline, (frozen["d"], frozen["r"]), dis, ref, args.batch, device), device)
    out["test"]["fp32_peak_gib"] = peak_memory(
        lambda: project_scores(scoring[None], dis, ref, args.crops_per_forward), device)
    if device.startswith("cuda"):
        t_bf16, s_bf16 = timed(lambda: project_scores(scoring[torch.bfloat16], dis, ref, args.crops_per_forward,
                                                      torch.bfloat16), device, args.repeats)
        out["test"].update({"bf16_images_per_s": args.images / t_bf16, "bf16_speedup": t_base / t_bf16,
                            "bf16_max_abs_dev": float(np.max(np.abs(s_bf16 - s_base))),
                            "bf16_srcc_vs_fp32": float(stats.spearmanr(s_bf16, s_base)[0])})

    on_section(out)
    base_rate = out["test"]["baseline_images_per_s"]
    out["per_reference"] = []
    for amp in scoring:
        for k in args.per_reference:
            out["per_reference"].append(per_reference(args, scoring[amp], base_rate, device, k, amp))
            on_section(out)
    scoring.clear()  # the copies' memory, before training is measured
    b = args.train_batch
    if b > args.images * args.n_ensemble:
        raise SystemExit(f"--train_batch {b} needs at least {b} crops: raise --images or --n_ensemble")
    td = dis.flatten(0, 1)[:b].to(device).float() / 255
    tr = ref.flatten(0, 1)[:b].to(device).float() / 255
    label = torch.rand(b, generator=g).to(device)
    model.train()
    fast_step = train_step_fn(model, [p for m in model.trainable_parts().values() for p in m.parameters()],
                              td, tr, label)
    for net in (baseline.vit, baseline.resnet):  # the official code leaves the backbones trainable
        net.requires_grad_(True)
    base_step = train_step_fn(lambda d, r: official_forward(baseline, *heads, d, r),
                              list(heads[0].values()) + list(heads[1].values()), td, tr, label)
    t_base_train, _ = timed(base_step, device, args.repeats)
    t_fast_train, _ = timed(fast_step, device, args.repeats)
    out["train"] = {"batch": b, "baseline_pairs_per_s": b / t_base_train, "fp32_pairs_per_s": b / t_fast_train,
                    "fp32_speedup": t_base_train / t_fast_train,
                    "baseline_peak_gib": peak_memory(base_step, device),
                    "fp32_peak_gib": peak_memory(fast_step, device)}
    if device.startswith("cuda"):  # --amp's step, and what it makes of 200 PIPAL epochs (steps only)
        def bf16_forward(d, r):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(d, r)

        bf16_step = train_step_fn(bf16_forward, [p for m in model.trainable_parts().values() for p in m.parameters()],
                                  td, tr, label)
        t_bf16_train, _ = timed(bf16_step, device, max(args.repeats, 30))  # ~10 ms steps: a median of many
        steps = 200 * math.ceil(PIPAL_TRAIN_PAIRS / b)
        out["train"].update(bf16_pairs_per_s=b / t_bf16_train, bf16_step_ms=t_bf16_train * 1e3,
                            pipal_200_epochs_steps_hours=steps * t_bf16_train / 3600)
    on_section(out)
    if args.process:
        model.eval()
        out["process"] = whole_process(args, model, base_rate, folder)
        on_section(out)
    if args.onnx:
        out["onnx"] = onnx_speed(args, model.eval(), dis, ref, folder)
    if args.compile and device.startswith("cuda"):  # last: its compilation cannot cost the sections above
        out["compiled"] = compiled_speed(args, model.eval(), dis, ref)
        on_section(out)
        out["compiled"].update(compiled_step(model, td, tr, label, args.repeats, device))
        on_section(out)
    return out


def compiled_step(model, dis: torch.Tensor, ref: torch.Tensor, label: torch.Tensor, repeats: int,
                  device: str = "cuda", backend: str = "inductor") -> dict:
    """The bf16 training step with the model's forward compiled as train.py --compile_mode reduce-overhead compiles
    it (CUDA graphs), against the same step uncompiled: ms a step after the warm-up calls (which compile)."""
    out = {}
    for name, mode in (("bf16_step_ms", None), ("bf16_compiled_step_ms", "reduce-overhead")):
        net = copy.deepcopy(model).train()
        if mode:  # the mode is inductor's (aot_eager, where gpu_check tests itself on the CPU, has none)
            net.compile(backend=backend, **({"mode": mode} if backend == "inductor" else {}))

        def forward(d, r, net=net):
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
                return net(d, r)

        step = train_step_fn(forward, [p for m in net.trainable_parts().values() for p in m.parameters()], dis, ref,
                             label)
        step()  # the first compiles; the CUDA graphs are recorded on the next ones
        out[name] = timed(step, device, max(repeats, 30))[0] * 1e3
    out["compiled_step_speedup"] = out["bf16_step_ms"] / out["bf16_compiled_step_ms"]
    return out


def compiled_speed(args: argparse.Namespace, model, dis: torch.Tensor, ref: torch.Tensor,
                   backend: str = "inductor") -> dict:
    """bf16 scoring with the model compiled (test.py --compile_model) against the same path uncompiled: images/s
    after the warm-up call (which compiles) and the largest score difference."""
    def run(backend: str | None) -> tuple[float, float, np.ndarray]:  # images/s, seconds of warm-up, scores
        scorer = copy.deepcopy(model).for_scoring(amp_dtype=torch.bfloat16, compile_backend=backend)
        start = time.perf_counter()
        t, scores = timed(lambda: project_scores(scorer, dis, ref, args.crops_per_forward, torch.bfloat16),
                          args.device, args.repeats)
        return args.images / t, time.perf_counter() - start - t * args.repeats, scores

    (rate, _, scores), (compiled_rate, warm_up, compiled_scores) = run(None), run(backend)
    return {"bf16_images_per_s": rate, "bf16_compiled_images_per_s": compiled_rate,
            "compiled_speedup": compiled_rate / rate, "compile_warm_up_s": warm_up,
            "max_abs_dev": float(np.max(np.abs(compiled_scores - scores)))}


def onnx_speed(args: argparse.Namespace, model, dis: torch.Tensor, ref: torch.Tensor, folder: str) -> dict:
    """The same crop pairs (every pair on its own: no reference sharing) scored by PyTorch and by the model's ONNX
    export in ONNX Runtime (CPU), in chunks of --crops_per_forward; images/s of each, the file's size and the largest
    relative score difference."""
    import onnxruntime as ort

    from models.onnx_runtime import export
    path = os.path.join(folder, "model.onnx")
    export(model.cpu(), path, args.crop, {"crop_size": args.crop, "patch_size": model.patch_size})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    d, r = (x.flatten(0, 1).float().div(255) for x in (dis, ref))
    step = args.crops_per_forward

    def run_onnx() -> np.ndarray:
        parts = [session.run(["score"], {"dis": d[i:i + step].numpy(), "ref": r[i:i + step].numpy()})[0]
                 for i in range(0, len(d), step)]
        return np.concatenate(parts).reshape(dis.shape[:2]).mean(axis=1)

    t_torch, s_torch = timed(lambda: project_scores(model.cpu(), dis, ref, step), "cpu", args.repeats)
    t_onnx, s_onnx = timed(run_onnx, "cpu", args.repeats)
    n = dis.shape[0]
    return {"torch_images_per_s": n / t_torch, "onnx_images_per_s": n / t_onnx, "onnx_vs_torch": t_torch / t_onnx,
            "bytes": os.path.getsize(path),
            "max_rel_dev": float(np.max(np.abs(s_onnx - s_torch) / np.abs(s_torch)))}


def whole_process(args: argparse.Namespace, model, base_rate: float, folder: str) -> dict:
    """Wall seconds of whole ``python test.py`` processes (start-up, checks, building the model from weight files,
    decoding, scoring, writing) on ``--process`` distorted images of one reference, median of ``--repeats``, against
    the baseline's scoring alone of as many images (its rate measured above, in this run); and test.py's own images/s
    (decoding and scoring, start-up not), in fp32 and, on CUDA, with --amp (bf16)."""
    import subprocess
    import sys

    import cv2

    from utils.checkpoint import save_weights

    k, data = args.process, os.path.join(folder, "process")
    os.makedirs(data, exist_ok=True)
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    cv2.imwrite(os.path.join(data, "A0000.bmp"), ref)
    names = [f"A0000_00_{i:02d}.bmp" for i in range(k)]
    for i, name in enumerate(names):
        noisy = np.clip(ref + rng.normal(0, 10 * (i + 1), ref.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(os.path.join(data, name), noisy)
    with open(os.path.join(data, "list.txt"), "w") as f:
        f.write("".join(f"{n}\n" for n in names))
    save_weights(os.path.join(folder, "head.pth"), model)
    gpu = args.device.split(":")[-1] if args.device.startswith("cuda:") else "0" if args.device == "cuda" else "-1"
    cmd = [sys.executable, "test.py", "--ckpt", os.path.join(folder, "head.pth"), "--vit_weights",
           os.path.join(folder, "vit.safetensors"), "--resnet_weights", os.path.join(folder, "resnet.pth"),
           "--test_ref_path", data, "--test_dis_path", data, "--test_list", os.path.join(data, "list.txt"),
           "--n_ensemble", str(args.n_ensemble), "--crop_size", str(args.crop), "--gpu_ids", gpu, "--num_workers", "0",
           "--overwrite"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out: dict = {"images": k, "baseline_scoring_seconds": k / base_rate}
    for amp, extra in [("fp32", [])] + ([("bf16", ["--amp"])] if gpu != "-1" else []):
        times, rates = [], []
        for _ in range(max(1, args.repeats)):
            start = time.perf_counter()
            done = subprocess.run(cmd + extra, cwd=repo, check=True, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            said = re.search(r"\(([\d.]+) s per image\)", done.stderr + done.stdout)
            if said:
                rates.append(1 / max(float(said.group(1)), 1e-9))
        prefix = "" if amp == "fp32" else "bf16_"
        out[f"{prefix}seconds"] = float(np.median(times))
        out[f"{prefix}scoring_images_per_s"] = float(np.median(rates)) if rates else None
    out["speedup"] = k / base_rate / out["seconds"]
    return out


def table(out: dict) -> str:
    """The results as a markdown table, one row per measurement; only the sections that ran (a run cut short, as the
    GPU check keeps it, shows what it finished)."""
    t, tr = out.get("test"), out.get("train")
    rows = [f"| device | {out['device']} |", "|---|---|"]
    if t:
        rows.append(f"| test, {out['n_ensemble']} crops of {out['crop']} on {out['size']}x{out['size']} (images/s) | "
                    f"baseline {t['baseline_images_per_s']:.4g}, project fp32 {t['fp32_images_per_s']:.4g} "
                    f"({t['fp32_speedup']:.2f}x), max rel. score deviation {t['fp32_max_rel_dev']:.1e} |")
    if t and "bf16_images_per_s" in t:
        rows.append(f"| test bf16 (images/s) | {t['bf16_images_per_s']:.4g} ({t['bf16_speedup']:.2f}x), max abs. "
                    f"deviation {t['bf16_max_abs_dev']:.2e}, SRCC vs fp32 {t['bf16_srcc_vs_fp32']:.4f} |")
    rows += [f"| scoring, {r['per_reference']} distorted per reference, {r['amp']} (images/s) | baseline "
             f"{r['baseline_images_per_s']:.4g}, shared {r['shared_images_per_s']:.4g} ({r['speedup']:.2f}x), max "
             f"rel. deviation {r['max_rel_dev']:.1e} |" for r in out.get("per_reference", [])]
    if tr:
        rows.append(f"| train step, batch {tr['batch']} (pairs/s) | baseline {tr['baseline_pairs_per_s']:.4g}, "
                    f"project fp32 {tr['fp32_pairs_per_s']:.4g} ({tr['fp32_speedup']:.2f}x) |")
    if tr and "bf16_step_ms" in tr:
        rows.append(f"| train step bf16, batch {tr['batch']} | {tr['bf16_step_ms']:.1f} ms "
                    f"({tr['bf16_pairs_per_s']:.4g} pairs/s): 200 PIPAL epochs of steps "
                    f"{tr['pipal_200_epochs_steps_hours']:.2f} h |")
    if t and tr and t["fp32_peak_gib"] is not None:
        rows.append(f"| peak memory (GiB) | test: baseline {t['baseline_peak_gib']:.2f}, project "
                    f"{t['fp32_peak_gib']:.2f}; train: baseline {tr['baseline_peak_gib']:.2f}, project "
                    f"{tr['fp32_peak_gib']:.2f} |")
    if "onnx" in out:
        o = out["onnx"]
        rows.append(f"| ONNX Runtime vs PyTorch, CPU, pairs on their own (images/s) | PyTorch "
                    f"{o['torch_images_per_s']:.4g}, ONNX Runtime {o['onnx_images_per_s']:.4g} "
                    f"({o['onnx_vs_torch']:.2f}x); file {o['bytes'] / 2 ** 20:.0f} MiB; max rel. deviation "
                    f"{o['max_rel_dev']:.1e} |")
    if "process" in out:  # and test.py's own rate (decoding and scoring: what it logs), per precision measured
        p = out["process"]
        rates = "".join(f", {amp} {p[key]:.4g} images/s" for amp, key in (
            ("fp32", "scoring_images_per_s"), ("bf16", "bf16_scoring_images_per_s")) if p.get(key))
        rows.append(f"| whole test.py process, {p['images']} distorted images of one reference (s) | baseline's "
                    f"scoring alone {p['baseline_scoring_seconds']:.1f}, process {p['seconds']:.1f} "
                    f"({p['speedup']:.2f}x){'; its own rate' + rates if rates else ''} |")
    if "compiled" in out:
        c = out["compiled"]
        rows.append(f"| test bf16, compiled (--compile_model; images/s) | {c['bf16_compiled_images_per_s']:.4g} "
                    f"against {c['bf16_images_per_s']:.4g} ({c['compiled_speedup']:.2f}x) after "
                    f"{c['compile_warm_up_s']:.0f} s of warm-up; max abs. deviation {c['max_abs_dev']:.1e} |")
        if "bf16_compiled_step_ms" in c:
            rows.append(f"| train step bf16, forward compiled (--compile_mode reduce-overhead) | "
                        f"{c['bf16_compiled_step_ms']:.1f} ms against {c['bf16_step_ms']:.1f} ms "
                        f"({c['compiled_step_speedup']:.2f}x) |")
    return "\n".join(rows)


def main(argv: list[str] | None = None, on_section: Callable[[dict], None] = lambda out: None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--patch_size", type=int, default=8, choices=tuple(VIT_TAGS))
    p.add_argument("--images", type=int, default=10)
    p.add_argument("--size", type=int, default=288)
    p.add_argument("--crop", type=int, default=224)
    p.add_argument("--n_ensemble", type=int, default=N_ENSEMBLE)
    p.add_argument("--batch", type=int, default=10, help="baseline images per batch (official test batch)")
    p.add_argument("--crops_per_forward", type=int, default=CROPS_PER_FORWARD)
    p.add_argument("--train_batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--per_reference", type=int, nargs="*", default=[],
                   help="also score with k distorted images per reference, shared against the baseline, for each k")
    p.add_argument("--process", type=int, default=0, metavar="K",
                   help="also time whole test.py processes on K distorted images of one reference")
    p.add_argument("--onnx", action="store_true",
                   help="also score the same crops with the model's ONNX export in ONNX Runtime (CPU)")
    p.add_argument("--compile", action="store_true",
                   help="CUDA: also bf16 scoring and the bf16 step compiled (--compile_model, --compile_mode)")
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args(argv)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides
        torch.backends.cudnn.allow_tf32 = False
    out = run(args, on_section)
    print(table(out))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
