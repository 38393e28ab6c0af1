"""Bad inputs, round 4: each case a user met, refused (or done) in one line that names the file or option, before
anything slow, and never by a silent choice."""
from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import predict
import test as test_entry
from data.datasets import read_csv_labels
from engine.scorer import load_scorer
from tests.conftest import make_pipal_set
from tests.forks import Forked
from utils.checkpoint import save_weights
from utils.errors import AHIQError
from utils.files import Lock

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def pair_dir(tmp_path) -> dict:
    data = make_pipal_set(tmp_path / "set", n_refs=1, n_dis=2, size=(40, 40), seed=1)
    dis = [os.path.join(data["dis"], n) for n in data["names"]]
    return {**data, "dis_files": dis, "ref_file": os.path.join(data["ref"], "A0000.bmp")}


def _predict(tiny_ckpt, *args: str) -> list[str]:
    return [*args, "--ckpt", tiny_ckpt, "--crop_size", "32", "--n_ensemble", "1", "--no_pretrained", "--gpu_ids",
            "-1", "--num_workers", "0"]


def test_a_pairs_csv_saved_by_a_spreadsheet_reads(tmp_path, pair_dir, tiny_ckpt):
    """UTF-8 with a BOM ("CSV UTF-8") and a quoted header: the one CSV reader takes both (predict.py refused them)."""
    rows = "".join(f'"{d}","{pair_dir["ref_file"]}"\r\n' for d in pair_dir["dis_files"])
    (tmp_path / "pairs.csv").write_bytes(b"\xef\xbb\xbf" + f'"dis","ref"\r\n{rows}'.encode())
    scores = predict.main(_predict(tiny_ckpt, "--pairs", str(tmp_path / "pairs.csv")))
    assert len(scores) == 2 and np.all(np.isfinite(scores))


def test_two_columns_of_one_kind_are_refused(tmp_path):
    (tmp_path / "two.csv").write_text("dis,dist_name,ref\na.png,b.png,r.png\n")
    with pytest.raises(AHIQError, match=r"two\.csv: 2 distorted-image columns in the header \(dis, dist_name\)"):
        read_csv_labels(str(tmp_path / "two.csv"))


def test_predict_claims_its_outputs_before_scoring(tmp_path, pair_dir, tiny_ckpt, monkeypatch):
    """--csv and --maps never replace files this run did not write (--overwrite does), and a --maps that cannot
    work is refused before the model is loaded."""
    import engine.runtime
    pair = ["--dis", pair_dir["dis_files"][0], "--ref", pair_dir["ref_file"]]
    (tmp_path / "old.csv").write_text("mine\n")
    with pytest.raises(AHIQError, match=r"old\.csv: exists; pass another --csv, or --overwrite"):
        predict.main(_predict(tiny_ckpt, *pair, "--csv", str(tmp_path / "old.csv")))
    assert (tmp_path / "old.csv").read_text() == "mine\n"
    predict.main(_predict(tiny_ckpt, *pair, "--csv", str(tmp_path / "old.csv"), "--overwrite"))
    assert (tmp_path / "old.csv").read_text().startswith("dis,ref,score")

    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(engine.runtime, "scoring_checkpoint", no_model)
    monkeypatch.setattr(predict, "scoring_checkpoint", no_model)
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(AHIQError, match=r"--maps .*a_file: is a file, or a folder read for images"):
        predict.main(_predict(tiny_ckpt, *pair, "--maps", str(tmp_path / "a_file")))
    with pytest.raises(AHIQError, match=r"--maps .*dis: is a file, or a folder read for images"):
        predict.main(_predict(tiny_ckpt, "--dis_dir", pair_dir["dis"], "--ref_dir", pair_dir["ref"], "--maps",
                              pair_dir["dis"]))
    stem = os.path.splitext(os.path.basename(pair_dir["dis_files"][0]))[0]
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / f"{stem}_maps.png").write_bytes(b"old")
    with pytest.raises(AHIQError, match=rf"{stem}_maps\.png: exists .*--overwrite"):
        predict.main(_predict(tiny_ckpt, *pair, "--maps", str(tmp_path / "maps")))


def test_one_pair_under_two_spellings_and_names_a_table_cannot_hold(tmp_path, pair_dir, tiny_ckpt):
    d = pair_dir["dis_files"][0]
    spelled = os.path.join(os.path.dirname(d), ".", os.path.basename(d))
    (tmp_path / "pairs.csv").write_text(f"dis,ref\n{d},{pair_dir['ref_file']}\n{spelled},{pair_dir['ref_file']}\n")
    with pytest.raises(AHIQError, match=r"the same pair as number 1"):
        predict.main(_predict(tiny_ckpt, "--pairs", str(tmp_path / "pairs.csv")))
    odd = tmp_path / "odd\nname.bmp"
    shutil.copy(d, odd)
    with pytest.raises(AHIQError, match=r"is empty or holds a comma or a line break"):
        predict.main(_predict(tiny_ckpt, "--dis", str(odd), "--ref", pair_dir["ref_file"]))


def test_the_pairing_rule_and_skipped_files_are_said(tmp_path, pair_dir, tiny_ckpt, caplog):
    (Path(pair_dir["dis"]) / "notes.txt").write_text("x")
    shutil.copy(pair_dir["dis_files"][0], Path(pair_dir["dis"]) / "A0000_00_09.gif")
    caplog.set_level("INFO")
    predict.main(_predict(tiny_ckpt, "--dis_dir", pair_dir["dis"], "--ref_dir", pair_dir["ref"]))
    assert "by PIPAL's first five characters + .bmp (--pair_rule pipal)" in caplog.text
    assert "skipped 2 file(s)" in caplog.text and ".gif: 1" in caplog.text and ".txt: 1" in caplog.text


def test_two_test_runs_on_the_same_results_are_refused(tmp_path, pipal_set, tiny_ckpt):
    run = tmp_path / "run"
    held = Lock(str(run / ".results.txt.lock"), "held by this test")  # what a running test.py holds
    try:
        with pytest.raises(AHIQError, match=r"results\.txt: another test\.py run is writing these results now"):
            test_entry.main(["--test_ref_path", pipal_set["ref"], "--test_dis_path", pipal_set["dis"],
                             "--test_list", pipal_set["list"], "--ckpt", tiny_ckpt, "--checkpoints_dir", str(tmp_path),
                             "--name", "run", "--crop_size", "32", "--n_ensemble", "1", "--no_pretrained",
                             "--gpu_ids", "-1", "--num_workers", "0"])
    finally:
        held.release()
    assert not (run / "results.txt").exists()


def test_worst_without_mos_is_refused_before_scoring(tmp_path, pipal_set, tiny_ckpt):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(pipal_set["names"]))
    with pytest.raises(AHIQError, match=r"names\.txt: has no scores; --worst 2 \(the images furthest"):
        test_entry.main(["--test_ref_path", pipal_set["ref"], "--test_dis_path", pipal_set["dis"], "--test_list",
                         str(names), "--ckpt", tiny_ckpt, "--checkpoints_dir", str(tmp_path), "--name", "w",
                         "--worst", "2", "--crop_size", "32", "--no_pretrained", "--gpu_ids", "-1"])


def test_saved_configurations_say_what_they_drop_and_take_a_numeric_gpu_id(tmp_path, pipal_set, tiny_ckpt,
                                                                           caplog):
    from options.test_options import parse_test_options
    config = tmp_path / "opt.json"
    config.write_text(json.dumps({"gpu_ids": -1, "learning_rate": 0.1, "n_ensemble": 3}))
    opt = parse_test_options(["--config", str(config), "--ckpt", tiny_ckpt])
    assert opt.gpu_ids == "-1" and opt.n_ensemble == 3
    assert "learning_rate" in caplog.text and "not used" in caplog.text


@pytest.mark.slow
def test_a_relative_ahiq_home_is_refused(monkeypatch, capsys):
    import options.defaults
    from options.test_options import parse_test_options
    monkeypatch.setattr(options.defaults, "HOME", "somewhere")  # what AHIQ_HOME=somewhere gives at start-up
    with pytest.raises(SystemExit) as done:  # --help reads nothing
        parse_test_options(["--help"])
    assert done.value.code == 0 and "--n_ensemble" in capsys.readouterr().out
    with pytest.raises(AHIQError, match="AHIQ_HOME=somewhere: give an absolute path"):
        parse_test_options(["--gpu_ids", "-1"])


def test_an_unknown_device_is_one_line():
    with pytest.raises(AHIQError, match=r"device 'tpu:7': expected 'cpu', 'cuda' or 'cuda:N'"):
        load_scorer(pretrained=False, device="tpu:7")


def test_a_checkpoint_without_a_mos_range_says_so(tmp_path, tiny_factory):
    path = str(tmp_path / "flat.pth")
    save_weights(path, tiny_factory(8), meta={"label_norm": {"mos_min": 3.0, "mos_max": 3.0}})
    with pytest.raises(AHIQError, match=r"flat\.pth: label_norm \{.*\}: its MOS range is 3 to 3, no range "
                                         r"at all"):
        load_scorer(path, pretrained=False)
    assert load_scorer(path, pretrained=False, mos_range=(1, 5)).label_norm.span == 4  # a range given wins


def test_hub_loads_after_the_first_print_no_registry_warning(tiny_ckpt):
    hub = torch.hub.load(str(REPO), "ahiq", source="local", pretrained=False, ckpt=tiny_ckpt, n_ensemble=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # timm's "Overwriting ... in registry" would fail here
        again = torch.hub.load(str(REPO), "ahiq", source="local", pretrained=False, ckpt=tiny_ckpt, n_ensemble=1)
    assert type(again).__name__ == type(hub).__name__ == "Metric"


def test_a_name_in_another_unicode_normalisation_is_pointed_at(tmp_path):
    import unicodedata

    from data.images import image_size
    nfd = unicodedata.normalize("NFD", "café.png")
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / nfd)  # any file: only the name is looked up
    with pytest.raises(AHIQError, match=r"image not found.*the same name in another Unicode normalisation.*NFC vs "
                                        "NFD"):
        image_size(str(tmp_path / unicodedata.normalize("NFC", "café.png")))
    # predict.py's folders paired by name: the reference spelled otherwise is named too
    from data.pairs import match_folders
    (tmp_path / "dis").mkdir()
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "dis" / unicodedata.normalize("NFC", "café.png"))
    with pytest.raises(AHIQError, match=r"no rule pairs every image.*another Unicode normalisation"):
        match_folders(str(tmp_path / "dis"), str(tmp_path), "same")


def test_predict_shows_progress_in_crops_for_one_large_grid(tmp_path, pair_dir, tiny_ckpt, capsys):
    predict.main(_predict(tiny_ckpt, "--dis", pair_dir["dis_files"][0], "--ref", pair_dir["ref_file"]))
    err = capsys.readouterr().err
    assert "crop" in err  # tqdm's bar counts crops, so a single image's grid moves while it is scored


@pytest.mark.slow
def test_sigterm_during_maps_says_what_was_finished(tmp_path, tiny_ckpt):
    """SIGTERM while predict.py writes maps: one line with how many pairs are finished and where, exit 143, and no
    pair half written."""
    import signal
    import time

    data = make_pipal_set(tmp_path / "many", n_refs=1, n_dis=40, size=(40, 40), seed=2)
    maps = tmp_path / "maps"
    log = tmp_path / "predict.log"  # predict.py forked from this process (tests/forks.py)
    proc = Forked("predict", ["--dis_dir", data["dis"], "--ref", os.path.join(data["ref"], "A0000.bmp"), "--maps",
                              str(maps), "--batch_size", "1", *_predict(tiny_ckpt)], log)
    deadline = time.monotonic() + 120
    while not list(maps.glob("*_maps.png")) and time.monotonic() < deadline:  # the first pair is written
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    err = log.read_text()
    last = err.strip().splitlines()[-1]
    assert proc.returncode == 143 and last.startswith("error: stopped by SIGTERM after "), err[-2000:]
    assert f"of 40 pairs: their maps (.png and .npz each) are in {maps}" in last
    pngs, npzs = ({p.name.rsplit("_maps", 1)[0] for p in maps.glob(f"*_maps.{e}")} for e in ("png", "npz"))
    assert pngs == npzs and len(pngs) == int(last.split("after ")[1].split(" of")[0])
