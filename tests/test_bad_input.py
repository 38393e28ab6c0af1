"""Nothing bad gets through: each bad input ends in one line naming the file (and line) and what to do, before any
slow work, and nothing already written is lost or torn: API misuse, incomplete and oversized images, unwritable
outputs, files that are not UTF-8, equal labels, duplicate list lines, bad option values, run folders with an owner,
resumes with other options, and kills at random moments of a save."""
from __future__ import annotations

import random
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import predict
import test as test_entry
import train
from data.datasets import read_labels
from data.images import image_size, read_rgb
from data.pipal import read_list
from engine.scorer import Scorer, load_scorer, to_batch
from tests.conftest import TINY_ARGS, make_pipal_set, policy, run_entry
from tests.forks import Forked
from utils.checkpoint import load_checkpoint
from utils.errors import AHIQError
from utils.files import FolderLock, atomic_torch_save

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scorer(tiny_factory) -> Scorer:
    return Scorer(tiny_factory(8), policy(32, 1), 50)


@pytest.mark.parametrize("bad, message", [
    (torch.full((1, 3, 40, 40), 128.0), r"values in \[128, 128\]"),
    (torch.full((1, 3, 40, 40), -0.5), r"values in \[-0\.5, -0\.5\]"),
    (torch.full((1, 3, 40, 40), float("nan")), r"values in \[nan, nan\] \(NaN or infinite values\)"),
    (torch.ones(1, 3, 40, 40, dtype=torch.bool), r"got torch\.bool of shape \(1, 3, 40, 40\)"),
    (torch.ones(1, 3, 40, 40, dtype=torch.complex64), "got torch.complex64"),
    (torch.full((1, 3, 40, 40), 200, dtype=torch.uint8), "got torch.uint8 .*divide uint8 RGB by 255"),
    (np.zeros((1, 3, 40, 40), np.float32), "got ndarray.*torch.from_numpy"),
    (torch.zeros(0, 3, 40, 40), r"B >= 1.*got torch\.float32 of shape \(0, 3, 40, 40\)"),
    (torch.zeros(3, 40, 40), r"\(B, 3, H, W\) batch.*shape \(3, 40, 40\)"),
])
def test_the_api_refuses_tensors_outside_the_documented_form(scorer, bad, message):
    good = torch.rand(1, 3, 40, 40)
    with pytest.raises(AHIQError, match=message):
        scorer.score_tensors(bad, good)


@pytest.mark.parametrize("settings, facts", [
    ({"crops_per_forward": 0}, "crops_per_forward=0: expected at least 1"),
    ({"n_ensemble": 2.0}, "n_ensemble=2.0: expected an integer"),
    ({"seed": -1}, "seed=-1: expected 0 to 4294967295"),
    ({"windows": "grid", "random_windows": "official"}, "grid.*official"),
    ({"resize": True, "size": 16}, "size 16 .*crop size 224"),
    ({"bn_stats": "batch", "windows": "grid"}, "grid.*bn_stats"),
    ({"crop_size": 30}, "crop_size 30.*patch_size 8"),
    ({"amp_dtype": "bf16"}, "amp_dtype='bf16'.*torch.bfloat16"),
])
def test_api_settings_are_checked_as_their_options_are(tiny_ckpt, settings, facts):
    from engine.scorer import api_scorer
    from models import BackboneSource, read_checkpoint
    with pytest.raises(AHIQError, match=facts):
        api_scorer(read_checkpoint(tiny_ckpt), BackboneSource(pretrained=False), "cpu", **settings)


def test_the_api_refuses_other_misuse(scorer):
    with pytest.raises(AHIQError, match=r"non-empty list of \(distorted, reference\) file path pairs, got \[\]"):
        scorer.score_files([])
    with pytest.raises(AHIQError, match=r"\(distorted, reference\) file path pairs, got a\.png"):
        scorer.score_files(["a.png"])
    assert scorer.score_tensors(torch.rand(2, 3, 40, 40), torch.rand(2, 3, 40, 40)).shape == (2,)  # valid input
    with pytest.raises(AHIQError, match=r"dis: .*, shaped as ref \(2, 3, 40, 40\), .*got .*shape \(1, 3, 40, 40\)"):
        scorer.score_tensors(torch.rand(1, 3, 40, 40), torch.rand(2, 3, 40, 40))
    for images, sizes in (([], r"0 images of sizes \[\]"), ([torch.rand(3, 40, 40), torch.rand(3, 48, 40)],
                                                          r"2 images of sizes \[\(40, 40\), \(48, 40\)\]")):
        with pytest.raises(AHIQError, match=rf"dis: give one or more images of one size per call \(got {sizes}\)"):
            to_batch(images, "dis")
    with pytest.raises(AHIQError, match=r"backend 'onnxruntime': expected one of torch, onnxruntime \(onnxruntime "
                                        r"with ckpt='model\.onnx'"):
        load_scorer(backend="onnxruntime")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_load_scorer_on_cuda_without_a_gpu(tmp_path):
    from engine.scorer import load_scorer
    with pytest.raises(AHIQError, match="device 'cuda': CUDA is not available here"):
        load_scorer(str(tmp_path / "none.pth"), device="cuda", pretrained=False)


def _image(path: Path, size=(40, 48)) -> np.ndarray:
    img = (np.random.default_rng(0).random((*size, 3)) * 255).astype(np.uint8)
    cv2.imwrite(str(path), img)
    return img


@pytest.mark.parametrize("ext", ["jpg", "png", "bmp", "webp"])
def test_images_that_do_not_decode_completely_are_refused(tmp_path, ext):
    whole = tmp_path / f"whole.{ext}"
    _image(whole)
    assert read_rgb(str(whole)).shape == (40, 48, 3)
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    with pytest.raises(AHIQError, match=rf"cut\.{ext}: cannot be decoded as an image"):
        read_rgb(str(cut))


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A small valid PNG whose header (IHDR, with a correct CRC) claims another size: a decompression bomb."""
    cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + 'IHDR'
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    path.write_bytes(bytes(data))


def test_a_huge_header_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_claiming(bomb, 60000, 60000)
    with pytest.raises(AHIQError, match=r"bomb\.png: 60000x60000 pixels, more than the limit of 100,000,000.*"
                                        r"--max_pixels"):
        image_size(str(bomb))
    with pytest.raises(AHIQError, match="bomb.png"):  # a raised limit lets the header pass, the pixels do not
        read_rgb(str(bomb), max_pixels=4_000_000_000)


def test_files_that_are_not_utf8_name_the_line(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes("A0001_00_00.bmp,1500\nA0001_00_01.bmp,1400\nA0001_00_\xe9.bmp,1300\n".encode("latin-1"))
    with pytest.raises(AHIQError, match=r"list\.txt:3: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        read_list(str(listing))
    meta = tmp_path / "meta.csv"
    meta.write_bytes("ref_name,dist_name,mos\nI01.png,I01_\xff.png,3.2\n".encode("latin-1"))
    with pytest.raises(AHIQError, match=r"meta\.csv:2: not UTF-8"):
        read_labels(str(meta), "csv")


def test_duplicate_lines_are_refused(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("A0001_00_00.bmp,1500\nA0001_00_01.bmp,1400\n\nA0001_00_00.bmp,1500\n")
    with pytest.raises(AHIQError, match=r"list\.txt:4: A0001_00_00\.bmp is listed again \(first on line 1\)"):
        read_list(str(listing))
    meta = tmp_path / "meta.csv"
    meta.write_text("ref_name,dist_name,mos\nI01.png,I01_01.png,3\nI01.png,I01_02.png,2\nI01.png,I01_01.png,3\n")
    with pytest.raises(AHIQError, match=r"meta\.csv:4: I01_01\.png is listed again \(first on line 2\)"):
        read_labels(str(meta), "csv")


def _test_args(data: dict, ckpt: str, tmp_path: Path, *extra) -> list[str]:
    return ["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list", data["list"], "--ckpt",
            ckpt, "--checkpoints_dir", str(tmp_path / "ckpts"), "--crop_size", "32", "--n_ensemble", "1",
            "--gpu_ids", "-1", "--num_workers", "0", "--no_pretrained", "--name", "ahiq_pipal", *extra]


@pytest.fixture
def head(tiny_ckpt) -> str:
    return tiny_ckpt


def test_equal_labels_keep_the_predictions_and_stop(tmp_path, head):
    data = make_pipal_set(tmp_path / "set", n_refs=1, n_dis=3, size=(40, 40))
    Path(data["list"]).write_text("".join(f"{n},1500\n" for n in data["names"]))
    with pytest.raises(AHIQError, match=r"list\.txt: every listed score is 1500; SRCC/PLCC needs .*different quality.*"
                                        r"predictions are in"):
        test_entry.main(_test_args(data, head, tmp_path))
    assert len((tmp_path / "ckpts" / "ahiq_pipal" / "results.txt").read_text().splitlines()) == 3
    assert not (tmp_path / "ckpts" / "ahiq_pipal" / "results_metrics.json").exists()
    with pytest.raises(AHIQError, match=r"list\.txt: every listed score is 1500; training .*different quality"):
        train.main(["--train_list", data["list"], "--train_ref_path", data["ref"], "--train_dis_path", data["dis"],
                    "--checkpoints_dir", str(tmp_path / "t"), "--no_pretrained", "--gpu_ids", "-1", "--crop_size",
                    "32"])


@pytest.mark.parametrize("entry, extra, message", [
    ("test", ["--batch_size", "0"], "--batch_size 0: .*at least 1"),
    ("test", ["--n_ensemble", "0"], "--n_ensemble 0: .*at least 1"),
    ("test", ["--num_workers", "-1"], "--num_workers -1: .*at least 0"),
    ("test", ["--worst", "-1"], "--worst -1: .*at least 0"),
    ("test", ["--split_part", "val"], "--split_part val .*--split_file"),
    ("predict", ["--batch_size", "-2"], "--batch_size -2: .*at least 1"),
    ("train", ["--val_batch_size", "0"], "--val_batch_size 0: .*at least 1"),
    ("train", ["--learning_rate", "-1"], "--learning_rate -1.0: .*more than 0"),
    ("train", ["--save_last_every", "inf"], "--save_last_every inf: .*finite"),
])
def test_bad_option_values_stop_before_anything_loads(tmp_path, entry, extra, message):
    missing = str(tmp_path / "no_such.pth")  # would fail later, when loading: the option error must come first
    common = ["--ckpt", missing, "--gpu_ids", "-1", "--checkpoints_dir", str(tmp_path)]
    run = {"test": test_entry.main, "train": train.main,
           "predict": lambda a: predict.main(["--dis", "x.png", "--ref", "y.png", *a])}[entry]
    with pytest.raises(AHIQError, match=message):
        run(common + extra)


def test_an_unwritable_output_is_one_line(tmp_path, head, capsys):
    data = make_pipal_set(tmp_path / "set", n_refs=1, n_dis=3, size=(40, 40))
    (tmp_path / "a_file").write_text("not a folder")
    args = _test_args(data, head, tmp_path)
    args[args.index("--checkpoints_dir") + 1] = str(tmp_path / "a_file" / "ckpts")
    proc = run_entry(capsys, "test.py", *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'a_file'}")


def _train_args(tmp_path: Path, name: str, *extra) -> list[str]:
    t = make_pipal_set(tmp_path / "train", n_refs=2, n_dis=3, size=(40, 40), seed=1)
    v = make_pipal_set(tmp_path / "val", n_refs=1, n_dis=3, size=(40, 40), seed=2)
    return ["--train_ref_path", t["ref"], "--train_dis_path", t["dis"], "--train_list", t["list"], "--val_ref_path",
            v["ref"], "--val_dis_path", v["dis"], "--val_list", v["list"], *TINY_ARGS,
            "--checkpoints_dir", str(tmp_path / "ckpts"), "--name",
            name, "--crop_size", "32", "--gpu_ids", "-1", "--num_workers", "0", "--num_avg_val", "1",
            "--batch_size", "2", *extra]


@pytest.mark.slow
def test_a_run_folder_has_one_owner_and_a_crash_frees_it(tmp_path):
    run_dir = tmp_path / "ckpts" / "owned"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from utils.files import FolderLock; "
                               f"FolderLock({str(run_dir)!r}); print('held', flush=True); time.sleep(600)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    args = _train_args(tmp_path, "owned", "--n_epoch", "1")
    start = time.perf_counter()
    with pytest.raises(AHIQError, match=r"owned: another process is using this run folder \(train\.py\)"):
        train.main(args)
    assert time.perf_counter() - start < 30  # at once: before any model or data is loaded
    holder.kill()  # a crash (SIGKILL) releases the lock: the folder is free again
    holder.wait()
    FolderLock(str(run_dir)).release()


def test_stale_temporaries_are_removed_and_resume_checks_the_options(tmp_path):
    args = _train_args(tmp_path, "resumed", "--n_epoch", "1")
    train.main(args)
    run_dir = tmp_path / "ckpts" / "resumed"
    (run_dir / ".tmp-killedsave").write_bytes(b"x" * 1000)  # what a kill during a save leaves
    with pytest.raises(AHIQError, match=r"last\.pth: was trained with other options \(--batch_size 2 then, 3 now; "
                                        r"--learning_rate 0\.0001 then, 0\.0002 now\)"):
        train.main(args[:-2] + ["--n_epoch", "2", "--resume", "--batch_size", "3", "--learning_rate", "2e-4"])
    train_list = Path(args[args.index("--train_list") + 1])
    original = train_list.read_text()
    train_list.write_text(original.replace(",", ",1", 1))  # one label edited in place, same path
    with pytest.raises(AHIQError, match=r"last\.pth: reads other label files than when it started "
                                         r"\(the content of --train_list changed\)"):
        train.main(args[:-2] + ["--n_epoch", "2", "--resume"])
    train_list.write_text(original)
    state = train.main(args[:-2] + ["--n_epoch", "2", "--resume"])  # a longer run is allowed
    assert state.epoch == 2 and not list(run_dir.glob(".tmp-*"))


@pytest.mark.slow
def test_kills_at_random_moments_of_a_save_never_tear_last_pth(tmp_path):
    args = _train_args(tmp_path, "killed", "--n_epoch", "1")
    train.main(args)
    run_dir = tmp_path / "ckpts" / "killed"
    path = str(run_dir / "last.pth")
    ckpt = load_checkpoint(path)

    def save_forever() -> None:
        print("ready", flush=True)
        while True:
            atomic_torch_save(ckpt, path)

    rng = random.Random(5)
    for i in range(6):
        log = tmp_path / f"saver{i}.log"
        saver = Forked(save_forever, [], log)  # a process saving last.pth over and over (forked: no interpreter)
        while "ready" not in log.read_text() and saver.poll() is None:
            time.sleep(0.01)
        assert saver.poll() is None, log.read_text()  # ready and saving
        time.sleep(rng.uniform(0.0, 0.4))
        saver.kill()  # SIGKILL
        assert load_checkpoint(path)["train_state"]["epoch"] == 1  # never torn
    state = train.main(args[:-2] + ["--n_epoch", "2", "--resume"])
    assert state.epoch == 2 and not list(run_dir.glob(".tmp-*"))


def test_test_py_checks_the_list_and_images_before_building_the_model(tmp_path, head):
    data = make_pipal_set(tmp_path / "set", n_refs=1, n_dis=2, size=(40, 40))
    (Path(data["dis"]) / "A0000_00_01.bmp").unlink()
    with pytest.raises(AHIQError, match=r"A0000_00_01\.bmp: image not found"):  # not the missing backbone file
        test_entry.main(["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list", data["list"],
                       "--ckpt", head, "--gpu_ids", "-1", "--checkpoints_dir", str(tmp_path), "--crop_size", "32",
                       "--vit_weights", str(tmp_path / "absent_vit.safetensors")])


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.fill_(float("nan")), r"holds NaN or infinite values.*downloaded or copied again"),
    (lambda t: t.fill_(float("inf")), r"holds NaN or infinite values"),
    (lambda t: t.to(torch.int64), r"is torch\.int64, not a floating-point tensor"),
])
def test_backbone_files_are_held_to_a_checkpoints_rules(tmp_path, damage, message):
    """A NaN, infinite or integer tensor in a backbone weights file stops in one line naming the file and the tensor
    (it used to give the score nan with exit 0)."""
    import timm
    from safetensors.torch import save_file

    from models import build_model
    from models.tiny import TINY_RESNET, TINY_VIT

    files = {}
    for role, name in (("vit", TINY_VIT[8]), ("resnet", TINY_RESNET)):
        sd = {k: v.contiguous() for k, v in timm.create_model(name, pretrained=False).state_dict().items()}
        if role == "vit":
            key = next(k for k in sd if k.endswith("blocks.0.attn.qkv.weight"))
            sd[key] = damage(sd[key].clone())
        files[role] = str(tmp_path / f"{role}.safetensors")
        save_file(sd, files[role])
    with pytest.raises(AHIQError, match=rf"vit\.safetensors: .*blocks\.0\.attn\.qkv\.weight {message}"):
        build_model(8, vit_name=TINY_VIT[8], resnet_name=TINY_RESNET, head_width=16, vit_weights=files["vit"],
                    resnet_weights=files["resnet"])
