"""Dataset formats and presets, DMOS flipping, the real KADID-10k list and images, split files (identical across
processes, content-disjoint, reused), and the PIPAL preparation script."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data.datasets import PRESETS, Labels, SplitChoice, pair_dataset, read_labels, select_rows
from data.images import read_rgb
from data.label_norm import LabelNorm
from data.splits import load_or_create_splits, make_splits, part_counts
from data.windows import fixed_windows
from engine.runtime import load_dataset
from options.train_options import parse_train_options
from tests.conftest import FIXTURES, make_fr_dataset, needs_fixtures, policy
from tools.prepare_pipal import prepare
from utils.errors import AHIQError

REPO = Path(__file__).resolve().parents[1]
KADID = FIXTURES / "kadid10k"
KADID_REAL = {"I01_01_02.png": 4.33, "I01_01_05.png": 1.10, "I01_06_05.png": 2.27, "I01_15_05.png": 1.33}


def _opt(*args: str):
    return parse_train_options(["--gpu_ids", "-1", "--no_pretrained", "--crop_size", "32", *args])


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_layouts_read_and_higher_is_always_better(tmp_path, preset):
    data = make_fr_dataset(tmp_path, preset, n_refs=3, n_dis=3)
    opt = _opt("--dataset", preset, "--data_root", str(tmp_path))
    assert opt.train_list == data["labels"]
    ds = load_dataset(opt, "train", "all", policy(32, 1))
    assert len(ds) == 9 and ds.norm.lower_better == PRESETS[preset].lower_better
    np.testing.assert_allclose(ds.raw_scores, [data["scores"][n] for n in ds.names])
    # distortion strength grows with d inside each reference: the normalised label must fall (DMOS is flipped)
    for r in range(3):
        assert np.all(np.diff(ds.labels[3 * r:3 * r + 3]) < 0), (preset, ds.names[3 * r:3 * r + 3])
    assert ds.labels.min() == 0 and ds.labels.max() == 1
    item = ds[(0, 4)]  # a training sample of a non-square (40x56) image
    assert item["dis"].shape == (1, 3, 32, 32) and item["ref"].shape == (1, 3, 32, 32)


def test_dmos_is_flipped_and_maps_back(tmp_path):
    raw = np.array([10.0, 50.0, 90.0, 30.0])
    labels = _labels(raw)
    for name in {*labels.names, *labels.refs}:
        cv2.imwrite(str(tmp_path / name), np.zeros((8, 8, 3), np.uint8))
    ds = pair_dataset(str(tmp_path), str(tmp_path), labels, lower_better=True, policy=policy(8, 1))
    np.testing.assert_allclose(ds.labels, [1.0, 0.5, 0.0, 0.75])
    assert ds.norm.to_dict() == {"method": "minmax", "mos_min": 10.0, "mos_max": 90.0, "lower_better": True}
    np.testing.assert_allclose(LabelNorm.from_meta({"label_norm": ds.norm.to_dict()}).invert(ds.labels), raw)
    mos = pair_dataset(str(tmp_path), str(tmp_path), labels, lower_better=False, policy=policy(8, 1))
    np.testing.assert_allclose(mos.labels, [0.0, 0.5, 1.0, 0.25])
    np.testing.assert_allclose(LabelNorm.fit(raw, False).invert(mos.labels), raw)
    assert mos.norm == LabelNorm(10.0, 90.0, False)


def _labels(raw):
    return Labels("mem", [f"d{i}.png" for i in range(len(raw))], ["r.png"] * len(raw), np.asarray(raw))


@needs_fixtures()
def test_real_kadid_list_joined_with_its_real_images(tmp_path):
    labels = read_labels(str(KADID / "kadid10k_mos.txt"), "pipal", PRESETS["kadid10k"].ref_rule)
    assert len(labels) == 10125 and len(set(labels.refs)) == 81
    assert labels.names[0] == "I01_01_01.png" and labels.refs[0] == "I01.png" and labels.raw[0] == 4.57
    assert labels.refs[-1] == "I81.png"
    present = labels.subset([i for i, n in enumerate(labels.names) if (KADID / n).is_file()])
    assert dict(zip(present.names, present.raw)) == KADID_REAL
    ds = pair_dataset(str(KADID), str(KADID), present, policy=policy(224, 5))
    item = ds[0]
    assert item["dis"].shape == (5, 3, 224, 224)
    top, left = fixed_windows(384, 512, 224)[3]  # bottom-right window of a 512x384 image
    assert (top, left) == (160, 288)
    img = read_rgb(str(KADID / present.names[0]))
    np.testing.assert_array_equal(item["dis"][3].numpy().transpose(1, 2, 0), img[160:, 288:])
    # the same rows as a pyiqa meta-info CSV (KADID's column is named dmos there, but holds MOS)
    csv_file = tmp_path / "meta_info_KADID10kDataset.csv"
    csv_file.write_text("ref_name,dist_name,dmos,std\n"
                        + "".join(f"{r},{n},{s},0.1\n" for n, r, s in zip(present.names, present.refs, present.raw)))
    as_csv = read_labels(str(csv_file), "csv")
    assert (as_csv.names, as_csv.refs) == (present.names, present.refs)
    np.testing.assert_array_equal(as_csv.raw, present.raw)
    # the whole list against a folder holding only five images: stops at the first missing image, named
    opt = _opt("--dataset", "kadid10k", "--list_format", "pipal", "--train_list", str(KADID / "kadid10k_mos.txt"),
               "--train_ref_path", str(KADID), "--train_dis_path", str(KADID))
    with pytest.raises(AHIQError, match=r"I01_01_01\.png: image not found"):
        load_dataset(opt, "train", "all", policy(32, 1))


def test_csv_columns_are_found_by_name_in_any_order(tmp_path):
    f = tmp_path / "meta_info_PIPALDataset.csv"  # pyiqa's PIPAL file: hq_name, dist_name, elo_score
    f.write_text("dist_name,elo_score,hq_name,extra\nA0001_00_00.bmp,1520.5,A0001.bmp,x\n"
                 "sub/A0002_01_00.bmp,1400.25,A0002.bmp,y\n")
    labels = read_labels(str(f), "csv")
    assert labels.names == ["A0001_00_00.bmp", "sub/A0002_01_00.bmp"] and labels.refs == ["A0001.bmp", "A0002.bmp"]
    assert labels.raw.tolist() == [1520.5, 1400.25] and labels.columns == {"extra": ["x", "y"]}


def test_csv_errors_name_the_file_and_the_fix(tmp_path):
    f = tmp_path / "meta.csv"
    f.write_text("I01.png,I01_01_01.png,4.5\n")
    with pytest.raises(AHIQError, match="no header row.*--list_format pipal"):
        read_labels(str(f), "csv")
    f.write_text("a,b,c\nI01.png,I01_01_01.png,4.5\n")
    with pytest.raises(AHIQError, match=r"meta\.csv: no reference column.*ref_name"):
        read_labels(str(f), "csv")
    f.write_text("ref_name,dist_name,mos\nI01.png,I01_01_01.png\n")
    with pytest.raises(AHIQError, match=r"meta\.csv:2: 2 fields"):
        read_labels(str(f), "csv")
    f.write_text("ref_name,dist_name,mos\nI01.png,I01_01_01.png,good\n")
    with pytest.raises(AHIQError, match=r"meta\.csv:2: mos 'good' is not a finite number"):
        read_labels(str(f), "csv")
    f.write_text("ref_name,dist_name,mos\nI01.png,I01_01_01.png,4.5\n")
    with pytest.raises(AHIQError, match="CSV header.*--list_format csv"):
        read_labels(str(f), "pipal")


def test_split_column_selects_rows(tmp_path):
    f = tmp_path / "meta.csv"
    f.write_text("ref_name,dist_name,mos,split\nA.png,A_1.png,1,train\nB.png,B_1.png,2,test\nA.png,A_2.png,3,train\n")
    labels = read_labels(str(f), "csv")
    opt = _opt("--split_column", "split")
    assert select_rows(labels, "train", opt.split()).names == ["A_1.png", "A_2.png"]
    assert select_rows(labels, "test", opt.split()).names == ["B_1.png"]
    with pytest.raises(AHIQError, match="no rows in column split = val"):
        select_rows(labels, "val", opt.split())
    with pytest.raises(AHIQError, match=r"meta\.csv: no rows in column fold = train \(the file has no "
                                        r"such column; its other columns: \['split'\]\)"):
        select_rows(labels, "train", _opt("--split_column", "fold").split())


@pytest.mark.slow
def test_split_counts_and_disjoint_parts():
    assert part_counts(81, (6, 2, 2)) == [49, 16, 16]
    assert part_counts(29, (6, 2, 2)) == [17, 6, 6]
    assert part_counts(25, (8, 0, 2)) == [20, 0, 5]
    refs = [f"I{i:02d}.png" for i in range(30)]
    splits = make_splits(refs[::-1], (6, 2, 2), n_splits=3, seed=5)
    assert splits == make_splits(refs, (6, 2, 2), n_splits=3, seed=5)  # order of the label file does not matter
    for s in splits:
        parts = [set(s[p]) for p in ("train", "val", "test")]
        assert sum(map(len, parts)) == 30 and set.union(*parts) == set(refs)
    assert splits[0] != splits[1]  # each split index is a different permutation
    assert make_splits(refs, (6, 2, 2), 1, seed=6)[0] != splits[0]


def _split_in_subprocess(out: Path, labels: Path, hash_seed: str) -> dict:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    subprocess.run([sys.executable, "-m", "tools.make_splits", "--dataset", "kadid10k", "--list_format", "pipal",
                    "--labels", str(labels), "--out", str(out), "--n_splits", "3", "--split_seed", "42"],
                   cwd=REPO, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


@needs_fixtures()
def test_splits_are_identical_across_processes_and_content_disjoint(tmp_path):
    original = KADID / "kadid10k_mos.txt"
    shuffled = tmp_path / "shuffled.txt"  # the same rows in another order
    lines = original.read_text().splitlines()
    shuffled.write_text("\n".join(np.random.default_rng(0).permutation(lines)) + "\n")
    a = _split_in_subprocess(tmp_path / "a.json", original, "1")
    b = _split_in_subprocess(tmp_path / "b.json", shuffled, "2")
    assert a["splits"] == b["splits"] and a["counts"] == [49, 16, 16] and a["seed"] == 42
    labels = read_labels(str(original), "pipal", "prefix")
    for s in a["splits"]:
        train, val, test = (set(s[p]) for p in ("train", "val", "test"))
        assert not (train & val or train & test or val & test)
        assert train | val | test == set(labels.refs)
        # rows of different parts never share a reference image
        rows = {p: {labels.refs[i] for i, r in enumerate(labels.refs) if r in set(s[p])} for p in ("train", "test")}
        assert not rows["train"] & rows["test"]


def test_split_file_is_made_once_then_reused_and_checked(tmp_path):
    path = str(tmp_path / "splits.json")
    labels = _labels(np.arange(10.0))
    labels.refs = [f"R{i % 5}.png" for i in range(10)]
    first = load_or_create_splits(path, labels, (6, 2, 2), 2, seed=1)
    stamp = os.stat(path).st_mtime_ns
    assert load_or_create_splits(path, labels, (6, 2, 2), 2, seed=99) == first  # the file wins over new settings
    assert os.stat(path).st_mtime_ns == stamp
    other = _labels(np.arange(2.0))
    other.refs = ["R0.png", "X9.png"]
    with pytest.raises(AHIQError, match=r"made for other data.*X9\.png"):
        load_or_create_splits(path, other, (6, 2, 2), 2, seed=1)
    Path(path).write_text("{broken")
    with pytest.raises(AHIQError, match="splits.json: cannot be read as an AHIQ split file"):
        load_or_create_splits(path, labels, (6, 2, 2), 2, seed=1)


def _official_pipal(root: Path, with_val_images: bool = False) -> dict:
    """A tiny PIPAL download in the official layout: 2 references, distortions in Distortion_1 and _2."""
    train = root / "training"
    scores = {}
    for r in (1, 2):
        ref = np.full((16, 16, 3), 40 * r, np.uint8)
        (train / "Reference_train").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(train / "Reference_train" / f"A{r:04d}.bmp"), ref)
        lines = []
        for d in range(2):
            name = f"A{r:04d}_0{d}_00.bmp"
            folder = train / "Distortion" / f"Distortion_{d + 1}"
            folder.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(folder / name), ref + d)
            scores[name] = 1500.25 - 10 * d + r
            lines.append(f"{name},{scores[name]}")
        (train / "MOS_Scores_train").mkdir(exist_ok=True)
        (train / "MOS_Scores_train" / f"A{r:04d}.txt").write_text("\n".join(lines))
    return scores


def test_prepare_pipal_links_lists_and_checks(tmp_path):
    scores = _official_pipal(tmp_path / "PIPAL")
    out = tmp_path / "prepared"
    assert prepare(str(tmp_path / "PIPAL"), str(out)) == {"train": 4, "removed": []}
    assert os.path.islink(out / "Train_Dis" / "A0001_01_00.bmp") and os.path.islink(out / "Train_Ref" / "A0002.bmp")
    labels = read_labels(str(out / "PIPAL.txt"))
    assert dict(zip(labels.names, labels.raw)) == scores
    opt = _opt("--dataset", "pipal", "--data_root", str(out), "--crop_size", "16")
    assert len(load_dataset(opt, "train", "all", policy(16, 1))) == 4  # the images behind the links pass the checks
    assert prepare(str(tmp_path / "PIPAL"), str(out))["train"] == 4  # again: links kept, nothing breaks
    os.unlink(out / "Train_Ref" / "A0001.bmp")
    (out / "Train_Ref" / "A0001.bmp").write_bytes(b"mine")
    with pytest.raises(AHIQError, match="A0001.bmp: exists and is not a link"):
        prepare(str(tmp_path / "PIPAL"), str(out))
    assert (out / "Train_Ref" / "A0001.bmp").read_bytes() == b"mine"  # a user's file is never replaced
    # a validation folder without the listed images: named, with the count of missing ones
    (tmp_path / "PIPAL" / "validation" / "Reference_valid").mkdir(parents=True)
    (tmp_path / "PIPAL" / "validation" / "Distortion_valid").mkdir()
    with pytest.raises(AHIQError, match=r"PIPAL_NTIRE_Valid_MOS\.txt: 1000 of 1000 listed distorted images are not in "
                                        r".*and 25 of 25 references are not in"):
        prepare(str(tmp_path / "PIPAL"), str(tmp_path / "prepared2"))
    with pytest.raises(AHIQError, match="not the official PIPAL layout"):
        prepare(str(tmp_path / "prepared"), str(tmp_path / "x"))


def test_prepare_pipal_removes_a_set_it_made_before_and_its_hint_works(tmp_path, monkeypatch, capsys):
    import tools.prepare_pipal as prep
    from tools.prepare_pipal import main as prepare_main

    _official_pipal(tmp_path / "PIPAL")
    valid = tmp_path / "PIPAL" / "validation"
    for folder in ("Reference_valid", "Distortion_valid"):
        (valid / folder).mkdir(parents=True)
    cv2.imwrite(str(valid / "Reference_valid" / "A0009.bmp"), np.zeros((16, 16, 3), np.uint8))
    cv2.imwrite(str(valid / "Distortion_valid" / "A0009_00_00.bmp"), np.ones((16, 16, 3), np.uint8))
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "ntire21_val_mos.txt").write_text("A0009_00_00.bmp,1400.5\n")
    monkeypatch.setattr(prep, "LISTS", str(lists))
    out = tmp_path / "out"
    assert prepare(str(tmp_path / "PIPAL"), str(out)) == {"train": 4, "val": 1, "removed": []}
    (out / "NTIRE2021" / "Dis" / "mine.txt").write_text("a user's file")
    shutil.rmtree(valid)  # a new download without the validation set
    counts = prepare_main(["--pipal_root", str(tmp_path / "PIPAL"), "--out", str(out)])
    assert counts["removed"] == ["val"] and "val" not in counts
    assert not (out / "PIPAL_NTIRE_Valid_MOS.txt").exists() and not (out / "NTIRE2021" / "Ref").exists()
    assert (out / "NTIRE2021" / "Dis" / "mine.txt").read_text() == "a user's file"  # never a file of the user's
    printed = capsys.readouterr().out
    assert "val: made by an earlier run, not by this one: its links and list were removed" in printed
    hint = printed.split("training set instead: ")[1].splitlines()[0]
    opt = parse_train_options(shlex.split(hint)[2:] + ["--crop_size", "16", "--gpu_ids", "-1"])  # as printed
    assert len(load_dataset(opt, "train", "val", policy(16, 1), opt.split(create=True))) >= 1


def test_a_split_index_the_file_does_not_hold_is_named(tmp_path):
    labels = Labels(str(tmp_path / "l.txt"), [f"r{i}_d.png" for i in range(6)], [f"r{i}.png" for i in range(6)], None)
    path = str(tmp_path / "s.json")
    load_or_create_splits(path, labels, (0.6, 0.2, 0.2), 1, 0)
    assert len(select_rows(labels, "test", SplitChoice(path, 0))) >= 1
    with pytest.raises(AHIQError, match=r"l\.txt: no rows in split 3 of .*s\.json, part test \(the file holds 1 "
                                        r"splits, 0-0\)"):
        select_rows(labels, "test", SplitChoice(path, 3))
