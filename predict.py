"""Score your own image pairs: one pair (``--dis a.png --ref b.png``) or two folders matched by file name.

Prints a table (and writes ``--csv``): higher scores are better; by default on the normalised [0, 1] training
scale, ``--mos_scale`` maps them to MOS units with the range stored in the checkpoint (or ``--mos_range LO HI``).
Uses the released checkpoint in checkpoints/ahiq_pipal (``sh download.sh``) unless ``--ckpt`` says otherwise.
"""
from __future__ import annotations

import csv
import io
import os

from options.predict_options import parse_predict_options
from runtime import configure_device, device_of, scorer_for, scoring_checkpoint
from utils.errors import AHIQError, run_cli
from utils.files import atomic_write

IMAGE_EXTS = (".bmp", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")


def match_folders(dis_dir: str, ref_dir: str) -> list[tuple[str, str]]:
    """(dis, ref) pairs of images with the same file name in both folders; any unmatched name is an error."""
    for folder in (dis_dir, ref_dir):
        if not os.path.isdir(folder):
            raise AHIQError(f"{folder}: no such folder")

    def images(folder: str) -> set[str]:
        return {f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS)}

    dis, ref = images(dis_dir), images(ref_dir)
    only_dis, only_ref = sorted(dis - ref), sorted(ref - dis)
    if only_dis or only_ref:
        raise AHIQError(f"{dis_dir} and {ref_dir} do not match by file name: only in {dis_dir}: {only_dis[:5]}, "
                        f"only in {ref_dir}: {only_ref[:5]}; every distorted image needs a reference of the same name")
    if not dis:
        raise AHIQError(f"{dis_dir}: no images ({', '.join(IMAGE_EXTS)})")
    return [(os.path.join(dis_dir, n), os.path.join(ref_dir, n)) for n in sorted(dis)]


def table(pairs: list[tuple[str, str]], scores, unit: str) -> str:
    width = max(len(d) for d, _ in pairs)
    lines = [f"{'distorted'.ljust(width)}  score ({unit})"]
    lines += [f"{d.ljust(width)}  {s:.4f}" for (d, _), s in zip(pairs, scores)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[float]:
    opt = parse_predict_options(argv)
    pairs = [(opt.dis, opt.ref)] if opt.dis else match_folders(opt.dis_dir, opt.ref_dir)
    device = device_of(opt)
    scorer = scorer_for(opt, scoring_checkpoint(opt), device, configure_device(opt, device), opt.mos_range)
    scores = scorer.score_files(pairs, opt.batch_size, opt.num_workers, progress=len(pairs) > 1)
    unit = "normalised, higher is better"
    if opt.mos_scale:
        scores = scorer.to_mos(scores)
        unit = "DMOS units, lower is better" if scorer.labels_are_dmos else "MOS units, higher is better"
    print(table(pairs, scores, unit))
    if opt.csv:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["dis", "ref", "score"])
        writer.writerows([d, r, f"{s:.9g}"] for (d, r), s in zip(pairs, scores))
        atomic_write(opt.csv, buf.getvalue())
    return [float(s) for s in scores]


if __name__ == "__main__":
    run_cli(main)
