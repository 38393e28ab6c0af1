"""Values are checked where they enter, whatever their source: a saved configuration (--config), a checkpoint's
metadata and tensors, split files, protocol folders, label lists, API arguments. Each bad value is one line naming
the source; property tests feed random JSON values and expect a one-line error or a valid configuration."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import predict
import protocol
import test as test_entry
from data.datasets import read_csv_labels
from data.images import image_size, read_rgb
from data.label_norm import LabelNorm, require_scores
from data.splits import read_splits
from engine.scorer import Metric, load_scorer
from models import ModelConfig
from models.config import config_from_checkpoint
from options import test_options
from options.base_options import options_of
from options.test_options import parse_test_options
from tests.conftest import make_pipal_set, train_args
from utils.checkpoint import load_checkpoint, save_weights
from utils.errors import AHIQError
from utils.files import FolderLock

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                max_size=2), max_leaves=4)
TEST_KEYS = sorted(a.dest for a in options_of(test_options.TestConfig.parser()) if a.dest != "config")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(TEST_KEYS), value=JSON)
def test_any_json_value_in_a_saved_configuration_is_a_one_line_error_or_valid(tmp_path, key, value):
    path = tmp_path / "opt_test.json"
    path.write_text(json.dumps({key: value}))
    try:
        parse_test_options(["--config", str(path), "--gpu_ids", "-1"])
    except AHIQError as err:
        assert "\n" not in str(err)


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(sorted(test_options.scoring_options())), value=JSON)
def test_any_value_of_an_api_setting_is_a_one_line_error_or_taken(key, value):
    """The API's settings go through the options' one checker: whatever Python value a caller passes, it is taken
    as it is or refused in one line naming the setting (never a TypeError from deep inside)."""
    from engine.scorer import api_settings
    try:
        assert api_settings(**{key: value})[key] == value
    except AHIQError as err:
        assert "\n" not in str(err) and str(err).startswith(f"{key}=")


@pytest.mark.parametrize("key, value, message", [
    ("crop_size", 32.0, r"'crop_size' is 32\.0 \(a number\): expected an integer.*--crop_size"),
    ("num_workers", None, r"'num_workers' is null \(null\): expected a value"),
    ("batch_size", 2.5, r"'batch_size' is 2\.5 \(a number\): expected an integer"),
    ("resize", "false", r"'resize' is \"false\" \(a string\): expected true or false"),
    ("windows", "all", r"'windows' is \"all\" \(a string\): expected one of ensemble, grid"),
    ("seed", 2 ** 32, r"'seed' is 4294967296 \(an integer\): expected 0 to 4294967295"),
])
def test_saved_values_of_the_wrong_type_name_the_file_and_key(tmp_path, key, value, message):
    path = tmp_path / "opt_test.json"
    path.write_text(json.dumps({key: value}))
    with pytest.raises(AHIQError, match=rf"opt_test\.json: {message}"):
        parse_test_options(["--config", str(path)])


@pytest.mark.parametrize("seed", ["-1", str(2 ** 64)])
def test_a_seed_outside_numpy_range_is_refused(seed):
    with pytest.raises(AHIQError, match=rf"--seed {seed}: expected 0 to 4294967295"):
        parse_test_options(["--seed", seed, "--gpu_ids", "-1"])


MODEL_KEYS = [f.name for f in dataclasses.fields(ModelConfig)]  # derived: a new switch is covered at once


@settings(max_examples=200, deadline=None)
@given(key=st.sampled_from(MODEL_KEYS + ["mos_min", "mos_max", "lower_better"]), value=JSON)
def test_any_json_value_in_checkpoint_metadata_is_a_one_line_error_or_valid(key, value):
    meta = {"model": {key: value}} if key in MODEL_KEYS else \
        {"label_norm": {"mos_min": 0.0, "mos_max": 1.0, "lower_better": False, key: value}}
    try:
        config_from_checkpoint({"ahiq": meta}, "x.pth")
        LabelNorm.from_meta(meta, "x.pth")
    except AHIQError as err:
        assert "\n" not in str(err) and str(err).startswith("x.pth: ")


@pytest.mark.parametrize("meta, message", [
    ({"model": {"crop_size": "32"}}, r"model setting crop_size '32': expected an integer"),
    ({"model": {"patch_size": "8"}}, r"model setting patch_size '8': expected an integer"),
    ({"model": {"head_width": 0}}, r"model setting head_width 0: expected at least 1"),
    ({"model": {"fusion": "attention"}}, r"model setting fusion 'attention': expected one of deform, conv, none"),
    ({"model": {"vit_blocks": [0, "1"]}}, r"model setting vit_blocks \[0, '1'\]: expected an integer"),
    ({"model": {"vit_name": "hf-hub:someone/another-vit"}}, r"vit_name 'hf-hub:someone/another-vit': expected a "
                                                            r"timm model name"),
    ({"model": [1, 2, 3]}, r"its metadata is not what AHIQ writes \('model' is list"),
    ({"label_norm": {"mos_min": "abc", "mos_max": 1.0}}, r"expected numbers mos_min, mos_max"),
    ({"label_norm": {"mos_min": float("nan"), "mos_max": 1.0}}, r"label range nan to 1: not finite"),
    ({"label_norm": {"mos_min": -1e308, "mos_max": 1e308}}, r"not finite \(labels beyond \+-1e308 overflow"),
])
def test_checkpoint_metadata_of_the_wrong_type_is_refused_on_load(tmp_path, tiny_factory, meta, message):
    path = tmp_path / "m.pth"
    save_weights(str(path), tiny_factory(8))
    ckpt = torch.load(path, weights_only=True)
    ckpt["ahiq"].update(meta)
    torch.save(ckpt, path)
    with pytest.raises(AHIQError, match=rf"m\.pth: .*{message}"):
        load_scorer(str(path), str(tmp_path), pretrained=False)


@pytest.mark.parametrize("bad, message", [("nan", r"holds NaN or infinite values"),
                                          ("int", r"is torch\.int64, not a floating-point tensor")])
def test_checkpoint_tensors_must_be_finite_floats(tmp_path, tiny_factory, bad, message):
    path = tmp_path / "m.pth"
    save_weights(str(path), tiny_factory(8))
    ckpt = torch.load(path, weights_only=True)
    sd = ckpt["regressor_model_state_dict"]
    key = "conv.0.weight"
    sd[key] = sd[key].clone().fill_(float("nan")) if bad == "nan" else sd[key].long()
    ckpt.pop("params", None)
    torch.save(ckpt, path)
    with pytest.raises(AHIQError, match=rf"m\.pth: regressor\.{key.replace('.', '[.]')} {message}"):
        load_scorer(str(path), str(tmp_path), pretrained=False)


@pytest.mark.parametrize("content, message", [
    (b"<!DOCTYPE html><html><body>Sign in</body></html>", "an HTML or XML page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 12\n", "a Git LFS pointer"),
    (bytes(range(1, 65)), "not a zip archive or a pickle"),
    (b"", "the file is empty"),
    ("list", r"it holds a list, not a dict of state dicts"),
], ids=["html", "lfs", "bytes", "empty", "list"])
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, content, message):
    path = tmp_path / "AHIQ_vit_p8_epoch33.pth"
    if content == "list":  # a real PyTorch file that holds no dict
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(AHIQError, match=f"not a checkpoint AHIQ can read: .*{message}"):
        load_checkpoint(str(path))


def test_a_mos_range_must_be_finite_and_increasing(tmp_path, tiny_ckpt):
    for bad in ((5, 1), (float("nan"), 1), (2, 2)):
        with pytest.raises(AHIQError, match="give two finite numbers LO < HI"):
            load_scorer(tiny_ckpt, str(tmp_path), pretrained=False, mos_range=bad)
    data = make_pipal_set(tmp_path / "set", n_refs=1, n_dis=1, size=(32, 32))
    with pytest.raises(AHIQError, match="give two finite numbers LO < HI"):
        predict.main(["--dis", os.path.join(data["dis"], data["names"][0]), "--ref", os.path.join(data["ref"],
                      "A0000.bmp"), "--ckpt", tiny_ckpt, "--no_pretrained", "--gpu_ids", "-1", "--mos_scale",
                      "--mos_range", "5", "1"])


def test_labels_whose_range_overflows_name_the_list(tmp_path, tiny_ckpt):
    data = make_pipal_set(tmp_path / "set", n_refs=1, n_dis=2, size=(32, 32))
    Path(data["list"]).write_text(f"{data['names'][0]},1e308\n{data['names'][1]},-1e308\n")
    with pytest.raises(AHIQError, match=r"list\.txt: label range -1e\+308 to 1e\+308: not finite"):
        test_entry.main(["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list", data["list"],
                       "--ckpt", tiny_ckpt, "--no_pretrained", "--gpu_ids", "-1", "--name", "x",
                       "--checkpoints_dir", str(tmp_path)])


def test_split_files_with_shared_references_or_bad_ratios_are_refused(tmp_path):
    doc = {"format": "ahiq-splits/1", "ratios": [6, 2, 2], "seed": 1,
           "splits": [{"train": ["a.png", "b.png"], "val": ["c.png"], "test": ["b.png"]}]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(AHIQError, match=r"s\.json: .*split 0 has 1 reference\(s\) in both train and test \(e\.g\. "
                                        r"b\.png\)"):
        read_splits(str(path))
    for ratios in ("abc", 5, ["a", 1, 1]):
        path.write_text(json.dumps({**doc, "ratios": ratios, "splits": [{"train": ["a"], "val": [], "test": []}]}))
        with pytest.raises(AHIQError, match=r"s\.json: .*'ratios' is .*, expected a list of numbers"):
            read_splits(str(path))
    path.write_text(json.dumps({**doc, "splits": [{"train": [["a"]], "val": [], "test": []}]}))
    with pytest.raises(AHIQError, match=r"s\.json: not a valid AHIQ split file: expected train/val/test lists"):
        read_splits(str(path))


def test_a_protocol_folder_with_a_damaged_options_file_is_one_line(tmp_path):
    run = tmp_path / "proto"
    run.mkdir()
    (run / "opt_protocol.json").write_text("{not json")
    with pytest.raises(AHIQError, match=r"opt_protocol\.json: cannot be read as the options of a protocol "
                                         r"run \(Expecting"):
        protocol.main(["--checkpoints_dir", str(tmp_path), "--name", "proto", "--gpu_ids", "-1"])


def test_names_that_results_files_cannot_hold_are_refused(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text('dist_name,ref_name,mos\n"a,b.png",r.png,1\n')
    with pytest.raises(AHIQError, match=r"labels\.csv:2: image name 'a,b\.png' is empty or holds a comma"):
        read_csv_labels(str(path))
    path.write_text("dist_name,ref_name,mos\n,r.png,1\n")
    with pytest.raises(AHIQError, match=r"labels\.csv:2: image name '' is empty"):
        read_csv_labels(str(path))
    for text in ("", "dist_name,ref_name,mos\n"):
        path.write_text(text)
        with pytest.raises(AHIQError, match=r"labels\.csv: lists no images \(the file is empty, or a header alone"):
            read_csv_labels(str(path))


def test_exif_orientation_is_ignored_everywhere(tmp_path, tiny_ckpt):
    """A 48x40 JPEG tagged 'rotate 90': the header check, the decoder and the API's PIL form all see 48x40."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    for name, img in (("dis.jpg", pixels), ("ref.jpg", 255 - pixels)):
        Image.fromarray(img).save(tmp_path / name, exif=exif, quality=95)
    assert image_size(str(tmp_path / "dis.jpg")) == read_rgb(str(tmp_path / "dis.jpg")).shape[:2] == (40, 48)
    metric = Metric(load_scorer(tiny_ckpt, str(tmp_path), pretrained=False, crop_size=32, n_ensemble=5))
    from_paths = metric(str(tmp_path / "dis.jpg"), str(tmp_path / "ref.jpg"))
    with Image.open(tmp_path / "dis.jpg") as d, Image.open(tmp_path / "ref.jpg") as r:
        from_pil = metric(d, r)
    torch.testing.assert_close(from_paths, from_pil, rtol=1e-5, atol=0)


def test_the_run_folders_own_files_are_never_written_through_links(tmp_path, train_sets):
    import train
    run = tmp_path / "linked"
    run.mkdir()
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("keep")
    os.symlink(outside, run / "log.txt")
    with pytest.raises(AHIQError, match=r"log\.txt: is a symbolic link"):
        train.main(train_args(train_sets, tmp_path, "linked"))
    assert outside.read_text() == "keep"
    os.remove(run / "log.txt")
    os.symlink(outside, run / ".lock")
    with pytest.raises(AHIQError, match=r"\.lock: is a symbolic link"):
        FolderLock(str(run))
    assert outside.read_text() == "keep"


def test_the_same_images_for_training_and_validation_are_found_by_real_path(tmp_path, train_sets, monkeypatch):
    import train
    t = train_sets["train"]
    args = train_args(train_sets, tmp_path, "same")
    monkeypatch.chdir(os.path.dirname(t["list"]))
    args = [*args, "--val_list", "./" + os.path.basename(t["list"]), "--val_ref_path", t["ref"] + "/",
            "--val_dis_path", t["dis"]]
    with pytest.raises(AHIQError, match="training and validation would use the same images"):
        train.main(args)


def test_an_image_that_fails_in_validation_saves_the_epoch_first(train_sets, tmp_path):
    import train
    val = make_pipal_set(tmp_path / "val", n_refs=2, n_dis=2, size=(40, 40), seed=4)
    damaged = Path(val["dis"]) / val["names"][1]
    damaged.write_bytes(damaged.read_bytes()[:200])  # the header (and its size) intact: the check passes
    args = train_args(train_sets, tmp_path, "damaged", "--n_epoch", "2", "--val_ref_path", val["ref"],
                      "--val_dis_path", val["dis"], "--val_list", val["list"])
    with pytest.raises(AHIQError, match=rf"{damaged.name}: cannot be decoded.*validation of epoch 1; the epoch's "
                                        r"weights are saved in .*last\.pth: fix the file and continue with --resume"):
        train.main(args)
    state = torch.load(tmp_path / "damaged" / "last.pth", weights_only=True)["train_state"]
    assert (state["epoch"], state["step"]) == (1, 0)


def test_a_figure_nobody_asked_for_is_skipped_without_matplotlib(caplog, monkeypatch):
    import builtins

    from utils.plots import optional_figure, scatter_png

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    pred = np.linspace(0, 1, 6)
    assert optional_figure(lambda: scatter_png(pred, pred, {}), "scatter.png") is None
    assert "scatter.png not drawn: figures need matplotlib" in caplog.text
    with pytest.raises(AHIQError, match="another problem"):  # only that one error is forgiven
        optional_figure(lambda: (_ for _ in ()).throw(AHIQError("another problem")), "x.png")


@pytest.mark.slow
def test_ctrl_c_while_an_entry_point_imports_is_one_line_and_exit_130(tmp_path):
    """SIGINT as soon as utils.interrupt has been imported (Python's -X importtime says so on stderr: a handshake,
    not a guess of time), while torch and timm still import: one line, exit 130."""
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-X", "importtime", "train.py", "--help"],
                            cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    for line in proc.stderr:
        if line.rstrip().endswith("| utils.interrupt"):  # printed once the module (and its handler) is in place
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    said = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert proc.returncode == 130 and said == ["error: interrupted"], (proc.returncode, err[-2000:])
    assert not any(line.rstrip().endswith("| torch") for line in err.splitlines())  # stopped while torch imported


def test_a_checkpoint_cannot_choose_an_unpinned_backbone_by_itself(tmp_path):
    from models import build_model
    from models.tiny import TINY_RESNET

    other = "vit_small_patch8_224.dino"
    path = tmp_path / "other.pth"
    save_weights(str(path), build_model(8, pretrained=False, vit_name=other, resnet_name=TINY_RESNET))
    with pytest.raises(AHIQError, match=rf"other\.pth: names the backbone {other} \(vit_name\), not a pinned one.*"
                                        rf"give vit_name {other}"):
        load_scorer(str(path), str(tmp_path), pretrained=False)
    scorer = load_scorer(str(path), str(tmp_path), pretrained=False, model={"vit_name": other},  # said explicitly
                         allow_other_backbones=True)  # (its random backbones were not drawn from the seed)
    assert scorer.model.config.vit_name == other


@pytest.mark.parametrize("raw, minimum, vary, problem", [
    (None, 1, False, "has no scores"),
    (np.array([3.0]), 2, False, "has 1 image"),
    (np.array([3.0, 3.0, 3.0]), 2, True, "every listed score is 3; "),
])
def test_scores_that_cannot_serve_their_purpose_are_named(raw, minimum, vary, problem):
    with pytest.raises(AHIQError, match=rf"l\.txt: {problem}.*training needs {minimum} or more scored images"):
        require_scores(raw, "l.txt", "training", "fix", minimum=minimum, vary=vary)
    require_scores(np.array([3.0, 3.0, 3.0]), "l.txt", "--worst", "fix", minimum=1, vary=False)  # equal is fine there
    require_scores(np.array([1.0, 2.0]), "l.txt", "training", "fix")


def test_a_patch_size_without_a_pinned_vit_is_refused_and_another_vit_may_choose_one():
    with pytest.raises(AHIQError, match=r"model setting patch_size 32: expected one of 8, 16"):
        ModelConfig(32)
    assert ModelConfig(14, vit_name="vit_base_patch14_dinov2", crop_size=224).patch_size == 14
