"""Turn the official PIPAL download into the folders and list files train.py and test.py take, without copying.

Input (``--pipal_root``; the official layout)::

    training/Reference_train/A0001.bmp ...
    training/Distortion/Distortion_1/A0001_00_00.bmp ... (also Distortion_2, _3, _4)
    training/MOS_Scores_train/A0001.txt ...                ('A0001_00_00.bmp,1520.0648' lines)
    validation/Reference_valid/, validation/Distortion_valid/   (optional: the NTIRE 2021 validation set)

Output (``--out``; the layout of the ``pipal`` preset, so ``--dataset pipal --data_root OUT`` finds it)::

    Train_Ref/  Train_Dis/  PIPAL.txt                           (23,200 training pairs)
    NTIRE2021/Ref/  NTIRE2021/Dis/  PIPAL_NTIRE_Valid_MOS.txt   (1,000 validation pairs with the published MOS)
    Test_Ref/  Test_Dis/  test.txt                              (with --test_ref/--test_dis: NTIRE 2022 FR test)

The image folders hold symbolic links (``--link hardlink`` for hard links) to the downloaded files. Every listed
image and its reference is checked. Running it again is safe: links already right are kept; a file that is not a
link to the same image is never replaced; a validation or test set an earlier run linked and this one does not (no
longer in the download, or no --test_ref) is unlinked, so no stale set is read.

    python -m tools.prepare_pipal --pipal_root /data/PIPAL --out datasets/PIPAL
"""
from __future__ import annotations

import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split

import argparse
import glob
import json
import os

from data.datasets import PRESETS
from data.label_norm import require_scores
from data.pipal import pipal_reference_name, read_list
from utils.errors import AHIQError, run_cli
from utils.files import atomic_write, read_text, require_path

PIPAL = PRESETS["pipal"]  # the folder and list names are the preset's (written once, in data/datasets.py)

LISTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "lists")  # shipped


def _images(folder: str) -> dict[str, str]:
    return {name: os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if name.lower().endswith((".bmp", ".png"))}


def link_images(files: dict[str, str], folder: str, mode: str) -> int:
    """Link each ``name -> source`` into ``folder``; returns how many links were made (existing right ones kept)."""
    os.makedirs(folder, exist_ok=True)
    made = 0
    for name, src in files.items():
        dst = os.path.join(folder, name)
        src = os.path.abspath(src)
        if os.path.lexists(dst):
            if os.path.islink(dst) and os.path.realpath(dst) == os.path.realpath(src):
                continue
            if not os.path.islink(dst) and os.path.exists(dst) and os.path.samefile(dst, src):
                continue
            raise AHIQError(f"{dst}: exists and is not a link to {src}; move it away or choose another --out "
                            "(nothing was replaced)")
        if mode == "symlink":
            os.symlink(src, dst)
        else:
            os.link(src, dst)
        made += 1
    return made


def find_dir(root: str, *candidates: str) -> str | None:
    for rel in candidates:
        path = os.path.join(root, rel)
        if os.path.isdir(path):
            return path
    return None


def check_list(list_path: str, ref_dir: str, dis_dir: str) -> int:
    """Every listed image and its reference exist; returns the number of listed images."""
    names, _ = read_list(list_path)
    refs = list(dict.fromkeys(pipal_reference_name(n) for n in names))
    missing_dis = [n for n in names if not os.path.isfile(os.path.join(dis_dir, n))]
    missing_ref = [r for r in refs if not os.path.isfile(os.path.join(ref_dir, r))]
    if missing_dis or missing_ref:
        raise AHIQError(f"{list_path}: {len(missing_dis)} of {len(names)} listed distorted images are not in "
                        f"{dis_dir} (e.g. {missing_dis[:2]}) and {len(missing_ref)} of {len(refs)} references are not "
                        f"in {ref_dir} (e.g. {missing_ref[:2]}); is the download complete?")
    return len(names)


MANIFEST = ".prepare_pipal.json"  # the parts (train, val, test) an earlier run made in --out


def remove_stale(out: str, made: set[str]) -> list[str]:
    """The parts an earlier run made in ``out`` and this one did not: their link folders and lists are removed (so a
    validation or test set that is no longer there is not read by mistake); returns what was removed."""
    path = os.path.join(out, MANIFEST)
    try:
        before = set(json.loads(read_text(path))) if os.path.isfile(path) else set()
    except (AHIQError, ValueError, TypeError):
        before = set()
    layouts = {"val": PIPAL.val, "test": PIPAL.test}
    removed = []
    for part in sorted(before - made):
        if part not in layouts:
            continue
        ref_dir, dis_dir, labels = (os.path.join(out, rel) for rel in layouts[part])
        for folder in (ref_dir, dis_dir):
            if os.path.isdir(folder):
                for name in os.listdir(folder):  # links only: a file of the user's stays, and so does its folder
                    if os.path.islink(os.path.join(folder, name)):
                        os.unlink(os.path.join(folder, name))
                for stale in (folder, os.path.dirname(folder)):
                    if stale != out and os.path.isdir(stale) and not os.listdir(stale):
                        os.rmdir(stale)
        if os.path.isfile(labels):
            os.remove(labels)
        removed.append(part)
    atomic_write(path, json.dumps(sorted(made)))
    return removed


def link_set(ref_src: str, dis_src: str, out: str, layout: tuple[str, str, str], shipped_list: str, mode: str) -> int:
    """Link a reference and a distorted folder to ``layout`` (reference folder, distorted folder, list; relative to
    ``out``), write the shipped list there, check it; returns its length."""
    for folder in (ref_src, dis_src):
        require_path(folder, "image folder", "check the path", folder=True)
    ref_dir, dis_dir, list_path = (os.path.join(out, rel) for rel in layout)
    link_images(_images(ref_src), ref_dir, mode)
    link_images(_images(dis_src), dis_dir, mode)
    atomic_write(list_path, read_text(os.path.join(LISTS, shipped_list)))
    return check_list(list_path, ref_dir, dis_dir)


def prepare(pipal_root: str, out: str, mode: str = "symlink", test_ref: str | None = None,
            test_dis: str | None = None) -> dict:
    """Write the layout of the pipal preset (see the module docstring); returns the number of pairs of each list,
    and under ``removed`` the parts an earlier run made that this one did not (their links and lists removed)."""
    train = find_dir(pipal_root, "training", ".") if os.path.isdir(pipal_root) else None
    ref_dir = train and find_dir(train, "Reference_train")
    mos_dir = train and find_dir(train, "MOS_Scores_train")
    dis_dirs = sorted(glob.glob(os.path.join(train, "Distortion", "Distortion_*"))) if train else []
    mos_files = sorted(glob.glob(os.path.join(mos_dir, "*.txt"))) if mos_dir else []
    if not (ref_dir and mos_files and dis_dirs):
        raise AHIQError(f"{pipal_root}: not the official PIPAL layout (training/Reference_train, "
                        "training/Distortion/Distortion_1..4, training/MOS_Scores_train/*.txt); pass the folder that "
                        "holds training/")
    if bool(test_ref) != bool(test_dis):
        raise AHIQError("give both --test_ref and --test_dis (the NTIRE 2022 FR test folders)")
    counts = {}
    lines = []
    for mos_file in mos_files:
        names, scores = read_list(mos_file)
        require_scores(scores, mos_file, "PIPAL's training labels", "give the MOS file as shipped ('name,score' lines)",
                       minimum=1, vary=False)
        lines += [f"{n},{float(s)!r}" for n, s in zip(names, scores)]
    distorted: dict[str, str] = {}
    for folder in dis_dirs:
        for name, path in _images(folder).items():
            if name in distorted:
                raise AHIQError(f"{path}: the same name is also in {os.path.dirname(distorted[name])}")
            distorted[name] = path
    train_ref, train_dis, train_list = (os.path.join(out, rel) for rel in (PIPAL.ref_dir, PIPAL.dis_dir, PIPAL.labels))
    link_images(_images(ref_dir), train_ref, mode)
    link_images(distorted, train_dis, mode)
    atomic_write(train_list, "\n".join(lines) + "\n")
    counts["train"] = check_list(train_list, train_ref, train_dis)

    valid = find_dir(pipal_root, "validation", "Validation")
    if valid and find_dir(valid, "Reference_valid") and find_dir(valid, "Distortion_valid"):
        counts["val"] = link_set(os.path.join(valid, "Reference_valid"), os.path.join(valid, "Distortion_valid"),
                                 out, PIPAL.val, "ntire21_val_mos.txt", mode)
    if test_ref:
        counts["test"] = link_set(test_ref, test_dis, out, PIPAL.test, "ntire22_fr_test_names.txt", mode)
    counts["removed"] = remove_stale(out, set(counts))
    return counts


def prepare_pipal_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Link the official PIPAL download into the layout train.py reads.")
    p.add_argument("--pipal_root", required=True, help="the folder holding training/ (and validation/)")
    p.add_argument("--out", required=True, help="output folder (links and lists)")
    p.add_argument("--link", default="symlink", choices=("symlink", "hardlink"), help="how images are linked")
    p.add_argument("--test_ref", default=None, help="NTIRE 2022 FR test reference folder (optional)")
    p.add_argument("--test_dis", default=None, help="NTIRE 2022 FR test distorted folder (optional)")
    return p


def main(argv: list[str] | None = None) -> dict:
    opt = prepare_pipal_parser().parse_args(argv)
    counts = prepare(opt.pipal_root, opt.out, opt.link, opt.test_ref, opt.test_dis)
    for part in ("train", "val", "test"):
        if part in counts:
            print(f"{part}: {counts[part]} pairs, every distorted image and reference present")
    for part in counts["removed"]:
        print(f"{part}: made by an earlier run, not by this one: its links and list were removed")
    if "val" in counts:
        print(f"train with: sh train.sh (PIPAL={opt.out}), or python train.py --dataset pipal --data_root {opt.out}")
    else:
        print(f"no validation/Reference_valid + Distortion_valid under {opt.pipal_root}: no validation set; train on "
              f"a content-disjoint split of the training set instead: python train.py --dataset pipal --data_root "
              f"{opt.out} --split_file {os.path.join(opt.out, 'splits.json')}")
    if "test" in counts:
        print(f"reproduce the NTIRE 2022 submission with: PIPAL={opt.out} sh test.sh")
    return counts


if __name__ == "__main__":
    run_cli(main)
