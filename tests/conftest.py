"""Shared test helpers: tiny random-backbone models, weight files written on the fly, tiny PIPAL-style datasets."""
from __future__ import annotations

import logging
import os
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from models import RESNET_TAG, VIT_TAGS, BackboneSource, ModelConfig, build_from_config, build_model, read_checkpoint
from models.tiny import TINY_RESNET, TINY_VIT
from utils.checkpoint import load_head_weights, save_weights

# The tiny AHIQ (models/tiny.py): the same code on small backbones, for tests that need the computation's shape and
# not the real sizes; fidelity and interop tests use the real architectures (model_factory, backbone_files).
TINY_ARGS = ["--vit_name", TINY_VIT[8], "--resnet_name", TINY_RESNET, "--head_width", "16", "--no_pretrained"]

LISTS = Path(__file__).resolve().parents[1] / "data" / "lists"  # the published PIPAL lists, shipped
FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"  # real KADID-10k images (not shipped)
# One thread per test process, subprocesses too: run_tests.sh runs one worker per core, and tests/forks.py forks entry
# points, which hangs a child of a process whose OpenMP ran with several threads.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
if not FIXTURES.is_dir():  # a clone laid out elsewhere: the fixtures may sit beside the repository
    FIXTURES = Path(os.environ.get("AHIQ_FIXTURES", FIXTURES))


def load_head(model: torch.nn.Module, path: str) -> dict:
    """The trained parts of a model the test built, from the checkpoint ``path``, through the one reader: a file
    trained with other switches is refused as when they are given on the command line. Returns the checkpoint."""
    checkpoint = read_checkpoint(path, given=model.config.to_dict())
    load_head_weights(model, checkpoint.state, path)
    return checkpoint.state


@pytest.fixture(autouse=True)
def _no_forked_child_outlives_its_test():
    """A test that fails before it waits for its forked entry points (tests/forks.py) leaves none running."""
    from tests import forks
    yield
    while forks.STARTED:
        forks.STARTED.pop().kill()


def needs_fixtures() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures not present")


@pytest.fixture(scope="session")
def backbone_files(tmp_path_factory) -> dict:
    """Random full timm backbones (with head and all blocks) saved as local weight files, per patch size: ~780 MB,
    written once for all xdist workers of a run (the first writes them under a lock, the others wait and read)."""
    import fcntl

    if os.environ.get("PYTEST_XDIST_WORKER"):  # the run's folder holds one per worker: share it among them
        folder = tmp_path_factory.getbasetemp().parent / "backbones"
        folder.mkdir(exist_ok=True)
    else:
        folder = tmp_path_factory.mktemp("backbones")
    files = {"resnet": str(folder / "resnet50.pth"), **{p: str(folder / f"vit_p{p}.safetensors") for p in VIT_TAGS}}
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "done").exists():
            _write_backbones(files)
            (folder / "done").write_text("")
    return files


def _write_backbones(files: dict) -> None:
    torch.manual_seed(123)
    resnet = timm.create_model(RESNET_TAG, pretrained=False)
    # Non-trivial BatchNorm statistics, so a wrong eval/train mode would change the features.
    for m in resnet.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(resnet.state_dict(), files["resnet"])
    for patch, tag in VIT_TAGS.items():
        vit = timm.create_model(tag, pretrained=False)
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, files[patch])


@pytest.fixture(scope="session")
def model_factory(backbone_files):
    """Build (and cache) an AHIQ model with the session's backbone files and a seeded random head."""
    cache: dict = {}

    def make(patch: int = 8) -> torch.nn.Module:
        if patch not in cache:
            torch.manual_seed(7 + patch)
            model = build_model(patch, pretrained=False, vit_weights=backbone_files[patch],
                                resnet_weights=backbone_files["resnet"])
            cache[patch] = model.eval()
        return cache[patch]

    return make


@pytest.fixture(scope="session")
def tiny_factory():
    """Build (and cache) a tiny AHIQ with random backbones and a seeded random head."""
    cache: dict = {}

    def make(patch: int = 8, **switches) -> torch.nn.Module:
        key = (patch, tuple(sorted(switches.items())))
        if key not in cache:
            config = ModelConfig(patch, vit_name=TINY_VIT[patch], resnet_name=TINY_RESNET, head_width=16, **switches)
            # random weights drawn as every scorer draws them (--seed 1919), so its checkpoints score with theirs
            cache[key] = build_from_config(config, BackboneSource(pretrained=False), seed=1919).eval()
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_factory) -> str:
    """A checkpoint of the tiny AHIQ (its configuration inside, crop size 224: load it with no switches; tests
    score it at 32 with --crop_size)."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    save_weights(str(path), tiny_factory(8))
    return str(path)


@pytest.fixture(scope="session")
def train_sets(tmp_path_factory) -> dict:
    """Two tiny PIPAL-layout sets: training (3 references x 3) and validation (2 x 3)."""
    root = tmp_path_factory.mktemp("train_sets")
    return {"train": make_pipal_set(root / "train", n_refs=3, n_dis=3, size=(40, 44), seed=1),
            "val": make_pipal_set(root / "val", n_refs=2, n_dis=3, size=(40, 40), seed=2)}


def train_args(sets: dict, ckpts: Path, name: str, *extra: str) -> list[str]:
    """train.py's command line for ``train_sets`` on the tiny AHIQ at crop 32, on the CPU."""
    t, v = sets["train"], sets["val"]
    return ["--train_ref_path", t["ref"], "--train_dis_path", t["dis"], "--train_list", t["list"],
            "--val_ref_path", v["ref"], "--val_dis_path", v["dis"], "--val_list", v["list"], *TINY_ARGS,
            "--checkpoints_dir", str(ckpts), "--name", name, "--crop_size", "32", "--gpu_ids", "-1",
            "--num_workers", "0", "--num_avg_val", "2", "--batch_size", "2", "--save_interval", "100", *extra]


REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_entry(capsys, entry: str, *args: str) -> CliResult:
    """``python ENTRY ARGS`` (a script, or ``-m module``) run in this process, through its own ``__main__`` block
    (its ``run_cli`` included), without an interpreter start-up; stdout and stderr as the user would see them."""
    argv, handlers = sys.argv, logging.root.handlers[:]
    logging.root.handlers.clear()  # as in a fresh interpreter (no handler bound to an earlier test's stream)
    code = 0
    capsys.readouterr()
    try:
        if entry.startswith("-m "):
            sys.argv = [entry[3:], *args]
            imported = sys.modules.pop(entry[3:], None)  # run as `python -m` runs it: not the module imported here
            try:
                runpy.run_module(entry[3:], run_name="__main__", alter_sys=True)
            finally:
                if imported is not None:
                    sys.modules[entry[3:]] = imported
        else:
            sys.argv = [entry, *args]
            runpy.run_path(str(REPO / entry), run_name="__main__")
    except SystemExit as end:
        code = end.code if isinstance(end.code, int) else 1
    finally:
        sys.argv = argv
        logging.root.handlers[:] = handlers
    out = capsys.readouterr()
    return CliResult(code, out.out, out.err)


def heads_of(path: Path) -> dict:
    """The two official head state dicts of a checkpoint file."""
    ckpt = torch.load(path, weights_only=True)
    return {k: ckpt[k] for k in ("deform_net_model_state_dict", "regressor_model_state_dict")}


def make_pipal_set(root: Path, n_refs: int = 2, n_dis: int = 3, size: tuple[int, int] = (48, 56),
                   seed: int = 0) -> dict:
    """A tiny PIPAL-layout dataset: ref/A000r.bmp, dis/A000r_00_0d.bmp and a 'name, score' list."""
    rng = np.random.default_rng(seed)
    (root / "ref").mkdir(parents=True, exist_ok=True)
    (root / "dis").mkdir(parents=True, exist_ok=True)
    lines = []
    for r in range(n_refs):
        yy, xx = np.mgrid[0:size[0], 0:size[1]]
        ref = np.stack([(xx * 4 + r * 40) % 256, (yy * 5) % 256, ((xx + yy) * 3) % 256], -1).astype(np.uint8)
        cv2.imwrite(str(root / "ref" / f"A{r:04d}.bmp"), ref)
        for d in range(n_dis):
            name = f"A{r:04d}_00_{d:02d}.bmp"
            noisy = np.clip(ref + rng.normal(0, 12 * d, ref.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / "dis" / name), noisy)
            lines.append(f"{name}, {1500 - 60 * d + 7 * r + rng.uniform(0, 5):.4f}")
    (root / "list.txt").write_text("\n".join(lines))
    return {"ref": str(root / "ref"), "dis": str(root / "dis"), "list": str(root / "list.txt"),
            "names": [line.split(",")[0] for line in lines]}


def policy(crop: int = 224, n: int = 5, **kwargs):
    """A :class:`data.windows.WindowPolicy` with test.py's defaults for what is not given."""
    from data.windows import WindowPolicy
    return WindowPolicy(crop, n, **{"seed": 1919, "mode": "reference", "layout": "ensemble", "batch": 10, **kwargs})


def list_dataset(data: dict, crop_size: int = 224, n_crops: int = 5, resize: int | None = None, **kwargs):
    """The PairDataset of a ``make_pipal_set`` folder, built the way train.py and test.py build theirs."""
    from data.datasets import pair_dataset, read_labels
    return pair_dataset(data["ref"], data["dis"], read_labels(data["list"]),
                        policy=policy(crop_size, n_crops, resize=resize), **kwargs)


@pytest.fixture
def pipal_set(tmp_path) -> dict:
    return make_pipal_set(tmp_path / "set")


def _style_names(preset: str, r: int, d: int) -> tuple[str, str]:
    """(reference, distorted) names in the style of each dataset (pyiqa meta-info conventions)."""
    if preset == "live":
        return f"refimgs/ref{r}.bmp", f"jp2k/img{r * 10 + d + 1}.bmp"
    if preset == "csiq":
        return f"ref{r}.png", f"ref{r}.AWGN.{d + 1}.png"
    if preset == "tid2013":
        return f"I{r + 1:02d}.BMP", f"i{r + 1:02d}_01_{d + 1}.bmp"
    return f"I{r + 1:02d}.png", f"I{r + 1:02d}_01_{d + 1:02d}.png"


def make_fr_dataset(root: Path, preset: str, n_refs: int = 5, n_dis: int = 3, size: tuple[int, int] = (40, 56),
                    seed: int = 0) -> dict:
    """A tiny dataset laid out as ``--dataset preset --data_root root`` expects (pyiqa downloads / PIPAL prep).

    Distortion d of a reference adds noise of strength d; its score falls with d (DMOS rises for LIVE and CSIQ).
    Images are h x w = ``size`` (not square). Returns the root, label file and the raw scores by distorted name.
    """
    from data.datasets import PRESETS
    p = PRESETS[preset]
    rng = np.random.default_rng(seed)
    scores: dict[str, float] = {}
    rows = []
    for r in range(n_refs):
        yy, xx = np.mgrid[0:size[0], 0:size[1]]
        ref = np.stack([(xx * (3 + r) + r * 40) % 256, (yy * 5) % 256, ((xx + yy) * (2 + r)) % 256],
                       -1).astype(np.uint8)
        for d in range(n_dis):
            if preset == "pipal":
                ref_name, dis_name = f"A{r:04d}.bmp", f"A{r:04d}_00_{d:02d}.bmp"
            else:
                ref_name, dis_name = _style_names(preset, r, d)
            noisy = np.clip(ref + rng.normal(0, 15 * d, ref.shape), 0, 255).astype(np.uint8)
            for folder, name, img in ((p.ref_dir, ref_name, ref), (p.dis_dir, dis_name, noisy)):
                path = root / folder / name
                path.parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(path), img)
            quality = 80 - 20 * d + rng.uniform(0, 5) + 3 * r
            scores[dis_name] = round(100 - quality if p.lower_better else quality, 4)
            rows.append((ref_name, dis_name, scores[dis_name]))
    label_file = root / p.labels
    label_file.parent.mkdir(parents=True, exist_ok=True)
    if p.list_format == "csv":
        # as pyiqa's files name them: LIVE's 'mos' holds DMOS and KADID's 'dmos' holds MOS, so the direction must
        # come from the preset, never from the column name
        column = "dmos" if preset in ("csiq", "kadid10k") else "mos"
        text = f"ref_name,dist_name,{column},std\n" + "".join(f"{a},{b},{s:.4f},0.5\n" for a, b, s in rows)
    else:
        text = "".join(f"{b},{s:.4f}\n" for _, b, s in rows)
    label_file.write_text(text)
    return {"root": str(root), "labels": str(label_file), "scores": scores, "refs": sorted({a for a, _, _ in rows})}


def run_to_exit(cmd: list[str], log: Path, env: dict, timeout: float = 600, cwd: Path | None = None
                ) -> tuple[int, float]:
    """Run ``cmd`` (its own session, output to ``log``) to its end: its exit code and the seconds from its last
    output to its exit, so a test can tell a process that lingers after its work (issue: workers at exit)."""
    import signal
    import subprocess
    import time
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd or LISTS.parents[1],
                                start_new_session=True)
    size, last, start = -1, time.monotonic(), time.monotonic()
    while proc.poll() is None:
        now = log.stat().st_size
        if now != size:
            size, last = now, time.monotonic()
        if time.monotonic() - start > timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"{cmd[:3]} still running after {timeout:g} s, its last output "
                                 f"{time.monotonic() - last:.0f} s before: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc.returncode, time.monotonic() - last
