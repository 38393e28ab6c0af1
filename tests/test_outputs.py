"""Outputs are never silently replaced: test.py writes beside the checkpoint it scores and refuses results of another
checkpoint or list; output names cannot name a run's own files; train.py and protocol.py never default to the
released model's folder; a failed start leaves no folder; the resume message names --load_epoch."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import test as test_entry
import train
from options.protocol_options import parse_protocol_options
from options.train_options import parse_train_options
from tests.conftest import make_pipal_set, train_args
from utils.errors import AHIQError


def _args(data: dict, ckpt: str, *extra: str) -> list[str]:
    return ["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list", data["list"], "--ckpt",
            ckpt, "--crop_size", "32", "--n_ensemble", "1", "--gpu_ids", "-1", "--num_workers", "0",
            "--no_pretrained", *extra]


def test_results_go_beside_the_checkpoint_and_are_never_replaced_by_another_run(tmp_path, tiny_ckpt):
    ckpt = tmp_path / "mine" / "model.pth"
    ckpt.parent.mkdir()
    shutil.copy(tiny_ckpt, ckpt)
    one = make_pipal_set(tmp_path / "one", n_refs=1, n_dis=3, size=(40, 40), seed=1)
    two = make_pipal_set(tmp_path / "two", n_refs=1, n_dis=3, size=(40, 40), seed=2)
    first = test_entry.main(_args(one, str(ckpt)))
    assert first["predictions"] == str(ckpt.parent / "results.txt")  # beside the checkpoint, not ahiq_pipal/
    before = Path(first["predictions"]).read_text()
    assert test_entry.main(_args(one, str(ckpt)))["predictions"] == first["predictions"]  # the same run again: fine
    with pytest.raises(AHIQError, match=r"results\.txt: holds the predictions of another run \(list .*one/list\.txt' "
                                        r"then, .*two/list\.txt' now\); pass another --test_file_name"):
        test_entry.main(_args(two, str(ckpt)))
    assert Path(first["predictions"]).read_text() == before  # untouched
    other = test_entry.main(_args(two, str(ckpt), "--test_file_name", "two.txt"))
    assert Path(other["predictions"]).name == "two.txt" and Path(first["predictions"]).read_text() == before
    test_entry.main(_args(two, str(ckpt), "--overwrite"))
    assert Path(first["predictions"]).read_text() != before
    (ckpt.parent / "mine.txt").write_text("my notes\n")
    with pytest.raises(AHIQError, match=r"mine_source\.json: cannot be read as test\.py's record of what "
                                         r".*mine\.txt holds \(No such file"):
        test_entry.main(_args(one, str(ckpt), "--test_file_name", "mine.txt"))
    assert (ckpt.parent / "mine.txt").read_text() == "my notes\n"


@pytest.mark.parametrize("name", ["best.pth", "last.pth", "../x.txt", "sub/x.txt", "opt_test.txt", "log.txt",
                                  "metrics.jsonl", ".lock", ""])
def test_an_output_name_cannot_replace_a_run_file(tmp_path, tiny_ckpt, name):
    data = make_pipal_set(tmp_path / "set", n_refs=1, n_dis=2, size=(40, 40))
    with pytest.raises(AHIQError, match="give a plain file name such as results.txt"):
        test_entry.main(_args(data, tiny_ckpt, "--test_file_name", name))


def test_training_and_protocol_runs_have_their_own_folders(tmp_path):
    assert os.path.basename(parse_train_options(["--gpu_ids", "-1"]).run_dir) == "ahiq_train"
    assert os.path.basename(parse_protocol_options(["--gpu_ids", "-1"]).run_dir) == "ahiq_protocol"


def test_a_failed_start_leaves_no_folder_and_resume_names_load_epoch(train_sets, tmp_path):
    bad = make_pipal_set(tmp_path / "bad", n_refs=2, n_dis=2, size=(40, 40))
    os.remove(os.path.join(bad["dis"], bad["names"][0]))
    args = train_args(train_sets, tmp_path, "fresh")
    with pytest.raises(AHIQError, match="image not found"):
        train.main(args + ["--val_dis_path", bad["dis"], "--val_ref_path", bad["ref"], "--val_list", bad["list"]])
    assert not (tmp_path / "fresh").exists()
    run = tmp_path / "kept"
    run.mkdir()
    (run / "epoch_5.pth").write_bytes(b"x")
    with pytest.raises(AHIQError, match=r"last\.pth: nothing to resume from; continue from the weights of "
                                        r"epoch_5\.pth with --load_epoch 5"):
        train.main(train_args(train_sets, tmp_path, "kept") + ["--resume"])
    assert (run / "epoch_5.pth").exists()  # a folder that was there before is never removed
