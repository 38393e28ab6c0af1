"""Compare two models' results on the same list: each metric of both, the difference A - B with its seeded paired
bootstrap interval (over references when they repeat), and Williams' test for the dependent correlations (PLCC; SRCC
on ranks); overall and per distortion type (utils/stats.py).

    python -m tools.compare A_results.txt B_results.txt --list PIPAL_NTIRE_Valid_MOS.txt [--dataset pipal]

A and B are test.py results files ('name,score' lines) of the same images; the list gives their MOS.
"""
from __future__ import annotations

import utils.interrupt  # noqa: F401 - first: Ctrl-C while the libraries import is one line

# isort: split

import argparse
import json
import os

import numpy as np

from data.datasets import PRESETS, SplitChoice, distortion_groups, read_labels, select_rows
from data.label_norm import LabelNorm, require_scores
from data.pipal import read_list
from options.base_options import RunFields, check_options, check_value, group_parser, option_hints
from options.data_options import LabelFields, check_split_part
from options.defaults import SEED
from options.test_options import TestFields
from utils.errors import AHIQError, run_cli
from utils.files import atomic_write
from utils.stats import CI_METRICS, compare_models

MIN_COMPARED = 5


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Compare two results files of the same list: differences with intervals "
                                            "and significance.", parents=[group_parser(LabelFields)])
    p.add_argument("--split_file", default=None, help="the split file the results were scored on (test.py's)")
    p.add_argument("--split_index", type=int, default=0, help="which split of --split_file")
    p.add_argument("--split_column", default=None, help="instead of --split_file: the CSV column of the split")
    p.add_argument("--split_part", default=None, choices=("train", "val", "test", "all"),
                   help="the part of the split compared (default: test, as test.py)")
    p.add_argument("a", help="results of model A ('name,score' lines, test.py's)")
    p.add_argument("b", help="results of model B, the same images")
    p.add_argument("--list", required=True, help="the label list both were scored on (with MOS)")
    p.add_argument("--bootstrap", type=int, default=1000, help="paired resamples for the intervals")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the resampling")
    p.add_argument("--out", default=None, help="also write the comparison as JSON here")
    return p


def scores_by_name(path: str) -> dict[str, float]:
    names, scores = read_list(path)
    require_scores(scores, path, "a comparison", "give a results file of test.py ('name,score' lines)", minimum=1,
                   vary=False)
    return dict(zip(names, scores.tolist()))


def main(argv: list[str] | None = None) -> dict:
    opt = compare_parser().parse_args(argv)
    check_options(opt, LabelFields)
    hints = option_hints(TestFields, RunFields)
    for name in ("bootstrap", "seed"):  # this tool's own --bootstrap and --seed, checked as test.py's
        check_value(*hints[name], getattr(opt, name), f"--{name} {getattr(opt, name)}")
    if os.path.realpath(opt.a) == os.path.realpath(opt.b):
        raise AHIQError(f"{opt.a}: given as both A and B; compare the results of two models")
    preset = PRESETS[opt.dataset]
    labels = read_labels(opt.list, opt.list_format or preset.list_format, preset.ref_rule)
    check_split_part(opt.split_part, opt.split_file, opt.split_column)
    split = SplitChoice(opt.split_file, opt.split_index, opt.split_column)
    if split.active:  # the rows test.py scored with the same options
        labels = select_rows(labels, opt.split_part or "test", split)
    require_scores(labels.raw, opt.list, "a comparison", "give the list with MOS both were scored on",
                   minimum=MIN_COMPARED, vary=False)
    a, b = scores_by_name(opt.a), scores_by_name(opt.b)
    rows = [i for i, n in enumerate(labels.names) if n in a and n in b]
    missing = [n for n in labels.names if n not in a or n not in b]
    if missing:
        where = opt.a if missing[0] not in a else opt.b
        raise AHIQError(f"{where}: has no score for {missing[0]} ({len(missing)} listed image(s) lack one in A or B); "
                        "compare results of the same list")
    lower = opt.label_direction == "lower_better" if opt.label_direction else preset.lower_better
    norm = LabelNorm.fit(labels.raw, lower)
    mos = norm.apply(labels.raw)
    pa = np.asarray([a[labels.names[i]] for i in rows])
    pb = np.asarray([b[labels.names[i]] for i in rows])
    repeated = len(set(labels.refs)) < len(labels.refs)
    groups = labels.refs if repeated else None
    result = {"a": opt.a, "b": opt.b, "list": opt.list,
              "split": f"{split.describe()}, part {opt.split_part or 'test'}" if split.active else "every row",
              "overall": compare_models(pa, pb, mos, groups, opt.bootstrap, opt.seed, units=norm.span)}
    grouping = distortion_groups(labels)
    result["groups_from"] = grouping.why
    for key, values in grouping.keys.items():
        result[f"by_{key}"] = {}
        for value in sorted(set(values)):
            pick = [i for i, v in enumerate(values) if v == value]
            if len(pick) < MIN_COMPARED:
                result[f"by_{key}"][value] = {"n": len(pick), "note": f"too few images ({len(pick)})"}
                continue
            sub = None if groups is None else [groups[i] for i in pick]
            result[f"by_{key}"][value] = compare_models(pa[pick], pb[pick], mos[pick], sub, opt.bootstrap, opt.seed,
                                                        units=norm.span)
    print(table(result["overall"]))
    for key in grouping.keys:
        print(group_table(key, result[f"by_{key}"], grouping))
    if opt.out:
        atomic_write(opt.out, json.dumps(result, indent=2, allow_nan=False))
    return result


def table(c: dict) -> str:
    def num(v, fmt: str = "8.4f") -> str:
        return f"{'n/a':>8}" if v is None else format(v, fmt)

    intervals = (f"{int(c['level'] * 100)}% intervals from {c['resamples']} paired resamples of {c['resampled']}"
                 if c["resamples"] else f"no intervals: {c['note']}")
    lines = [f"{c['n']} images; {intervals}",
             f"{'metric':<6}  {'A':>8}  {'B':>8}  {'A - B':>8}  interval of A - B      Williams p (two-sided)"]
    notes = []
    for m in CI_METRICS:
        r = c[m]
        lo, hi = ("n/a" if v is None else f"{v:+.4f}" for v in r["diff_interval"])
        p = "-" if "williams_p" not in r else "n/a" if r["williams_p"] is None else f"{r['williams_p']:.3g}"
        lines.append(f"{m.upper():<6}  {num(r['a'])}  {num(r['b'])}  {num(r['diff'], '+8.4f')}  [{lo}, {hi}]  {p:>10}")
        if r.get("williams_note"):
            notes.append(f"{m.upper()} Williams: {r['williams_note']}")
    t = c["p1401"]
    if t["note"]:
        notes.append(f"P.1401 tests on mapped values: n/a ({t['note']})")
    else:
        p, r = t["plcc_mapped"], t["rmse_mapped"]
        notes.append(f"P.1401, after each model's logistic: PLCC {p['a']:.4f} vs {p['b']:.4f}, Fisher z "
                     f"{p['fisher_z']:+.3f}, p {p['p']:.3g}; RMSE (MOS units) {r['a']:.4g} vs {r['b']:.4g}, F "
                     f"{r['f']:.3f}, p {r['p']:.3g} (p-values two-sided)")
    return "\n".join(lines + notes)


def group_table(key: str, groups: dict, grouping) -> str:
    """Per distortion group: SRCC of A and B, the difference with its interval, Williams' p (two-sided)."""
    lines = [f"per {key} ({grouping.why}):", f"{key:<28}  {'n':>5}  {'SRCC A':>8}  {'SRCC B':>8}  {'A - B':>8}  "
                                              "interval of A - B      Williams p"]
    for code, c in groups.items():
        label = f"{code} {grouping.name_of(key, code) or ''}".strip()[:28]
        if "srcc" not in c:
            lines.append(f"{label:<28}  {c['n']:>5}  {c['note']}")
            continue
        r = c["srcc"]
        lo, hi = ("n/a" if v is None else f"{v:+.4f}" for v in r["diff_interval"])
        p = "n/a" if r["williams_p"] is None else f"{r['williams_p']:.3g}"
        cells = ["n/a" if v is None else f"{v:.4f}" for v in (r["a"], r["b"])]
        diff = "n/a" if r["diff"] is None else f"{r['diff']:+.4f}"
        lines.append(f"{label:<28}  {c['n']:>5}  {cells[0]:>8}  {cells[1]:>8}  {diff:>8}  [{lo}, {hi}]  {p:>10}")
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
