"""Results read the way papers report them: per distortion type and level, bootstrap intervals, and the difference
between two models with Williams' test (utils/stats.py, tools/compare.py, test.py's metrics file)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import test as test_entry
from data.datasets import Labels, distortion_groups, read_labels
from tests.conftest import FIXTURES, LISTS, needs_fixtures
from tools.compare import main as compare_main
from utils.errors import AHIQError
from utils.stats import _resample_rows, bootstrap_intervals, compare_models, group_metrics, williams_test


def _trivariate(n: int, r_ya: float, r_yb: float, r_ab: float, rng: np.random.Generator) -> np.ndarray:
    cov = np.array([[1, r_ya, r_yb], [r_ya, 1, r_ab], [r_yb, r_ab, 1]])
    return rng.multivariate_normal(np.zeros(3), cov, size=n).T


def test_williams_test_holds_its_level_and_finds_a_real_difference():
    """Under H0 (both models correlate 0.6 with the MOS) about 5% of 2000 samples of 60 images are called
    significant at 0.05; with 0.75 against 0.45 nearly all are. The statistic is antisymmetric in A and B."""
    rng = np.random.default_rng(0)
    p_null, p_alt = [], []
    for _ in range(2000):
        y, a, b = _trivariate(60, 0.6, 0.6, 0.5, rng)
        p_null.append(williams_test(np.corrcoef(y, a)[0, 1], np.corrcoef(y, b)[0, 1], np.corrcoef(a, b)[0, 1], 60)[1])
    for _ in range(200):
        y, a, b = _trivariate(60, 0.75, 0.45, 0.5, rng)
        p_alt.append(williams_test(np.corrcoef(y, a)[0, 1], np.corrcoef(y, b)[0, 1], np.corrcoef(a, b)[0, 1], 60)[1])
    assert 0.035 < np.mean(np.asarray(p_null) < 0.05) < 0.065
    assert np.mean(np.asarray(p_alt) < 0.05) > 0.9
    t, p = williams_test(0.7, 0.5, 0.4, 100)
    assert williams_test(0.5, 0.7, 0.4, 100) == pytest.approx((-t, p)) and williams_test(0.6, 0.6, 0.4, 100)[0] == 0


def test_bootstrap_intervals_are_seeded_cover_the_estimate_and_resample_whole_references():
    rng = np.random.default_rng(1)
    refs = np.repeat(np.arange(20), 5)
    label = rng.normal(size=20)[refs] + 0.3 * rng.normal(size=100)
    pred = label + 0.5 * rng.normal(size=100)
    one = bootstrap_intervals(pred, label, refs, n_boot=300, seed=7)
    assert one == bootstrap_intervals(pred, label, refs, n_boot=300, seed=7)  # reproducible
    assert one != bootstrap_intervals(pred, label, refs, n_boot=300, seed=8)
    srcc = stats.spearmanr(pred, label)[0]
    assert one["srcc"][0] < srcc < one["srcc"][1] and one["resampled"].startswith("references")
    rows = _resample_rows(refs, 100, np.random.default_rng(0))
    drawn = refs[rows]
    assert all(np.sum(drawn == r) % 5 == 0 for r in set(drawn.tolist()))  # each drawn reference with all 5 images
    flat = bootstrap_intervals(pred, label, None, n_boot=300, seed=7)
    assert flat["resampled"] == "images"
    # images of one reference are not independent: resampling them alone understates the uncertainty
    assert np.diff(one["srcc"])[0] > np.diff(flat["srcc"])[0]


def test_too_few_images_get_no_interval():
    out = bootstrap_intervals(np.arange(6.0), np.arange(6.0), None, n_boot=100)
    assert out["srcc"] == [None, None] and out["resamples"] == 0 and "too few images (6)" in out["note"]


def test_groups_too_small_are_listed_not_hidden():
    table = group_metrics(np.arange(7.0), np.arange(7.0) ** 2, ["a"] * 5 + ["b"] * 2)
    assert table["a"]["srcc"] == pytest.approx(1.0) and table["a"]["n"] == 5
    assert table["b"]["n"] == 2 and table["b"]["srcc"] is None and table["b"]["note"] == "too few images (2)"


def test_per_group_intervals_with_the_whole_lists_minimum():
    """A group of 40 images of 8 references gets 95% intervals (resampled by reference) around its point values; one
    of 12 images gets none, and says why; names come from the naming's table."""
    rng = np.random.default_rng(5)
    label = rng.uniform(0, 1, 52)
    pred = label + rng.normal(0, 0.1, 52)
    keys = ["01"] * 40 + ["02"] * 12
    refs = [f"r{i % 8}" for i in range(52)]
    table = group_metrics(pred, label, keys, refs, n_boot=300, seed=1, names={"01": "gaussian blur"}.get)
    big, small = table["01"], table["02"]
    assert big["name"] == "gaussian blur" and small["name"] is None
    assert big["srcc_interval"][0] < big["srcc"] < big["srcc_interval"][1]
    assert big["plcc_interval"][0] < big["plcc"] < big["plcc_interval"][1]
    assert small["srcc"] is not None and small["srcc_interval"] == [None, None] and "no interval" in small["note"]
    assert table == group_metrics(pred, label, keys, refs, n_boot=300, seed=1, names={"01": "gaussian blur"}.get)


@needs_fixtures()
def test_distortion_types_and_levels_from_real_lists():
    pipal = read_labels(str(LISTS / "pipal22_train_mos.txt"), "pipal", "pipal")
    groups = distortion_groups(pipal)
    assert groups.rule == "pipal" and len(set(groups.keys["group"])) == 7 and len(set(groups.keys["subtype"])) == 27
    kadid = read_labels(str(FIXTURES / "kadid10k" / "kadid10k_mos.txt"), "pipal", "prefix")
    k = distortion_groups(kadid)
    assert len(set(k.keys["type"])) == 25 and set(k.keys["level"]) == {"01", "02", "03", "04", "05"}
    assert k.name_of("type", "01") == "gaussian blur" and k.name_of("type", "25") == "contrast change"
    assert read_labels(str(LISTS / "ntire22_fr_test_names.txt"), "pipal", "pipal").raw is None


def test_distortion_groups_come_from_the_names_whatever_the_preset():
    def labels(names, columns=None):
        return Labels("x", names, names, None, columns or {})

    live = distortion_groups(labels(["jp2k/img1.bmp", "wn/img2.bmp"]))
    assert live.keys == {"type": ["jp2k", "wn"]} and live.name_of("type", "wn") == "white noise"
    csiq = distortion_groups(labels(["r.AWGN.1.png", "r.BLUR.5.png"]))
    assert csiq.keys == {"type": ["AWGN", "BLUR"], "level": ["1", "5"]} and csiq.rule == "csiq"
    tid = distortion_groups(labels(["i01_08_5.bmp", "I02_24_1.BMP"]))
    assert tid.rule == "tid2013" and tid.name_of("type", "24") == "sparse sampling and reconstruction"
    assert distortion_groups(labels(["a.png"], {"type": ["blur"]})).keys == {"type": ["blur"]}
    none = distortion_groups(labels(["a.png", "b_1.png"]))  # not every name says it
    assert none.keys == {} and "follow no known naming" in none.why


def test_test_py_writes_per_type_tables_and_intervals(tmp_path, tiny_ckpt):
    from tests.conftest import make_pipal_set
    pipal_set = make_pipal_set(tmp_path / "set", n_refs=5, n_dis=4, size=(40, 40), seed=6)  # 20 images, 5 refs
    result = test_entry.main(["--test_ref_path", pipal_set["ref"], "--test_dis_path", pipal_set["dis"],
                              "--test_list", pipal_set["list"], "--ckpt", tiny_ckpt, "--checkpoints_dir",
                              str(tmp_path), "--name", "t", "--crop_size", "32", "--n_ensemble", "1",
                              "--no_pretrained", "--gpu_ids", "-1", "--num_workers", "0", "--bootstrap", "200"])
    saved = json.loads((tmp_path / "t" / "results_metrics.json").read_text())
    assert set(saved["by_group"]) == {"00"} and saved["by_group"]["00"]["n"] == len(pipal_set["names"])
    assert set(saved["by_subtype"]) == {"00", "01", "02", "03"}
    assert saved["intervals"]["resamples"] == 200 and saved["intervals"]["resampled"].startswith("references")
    assert result["intervals"] == saved["intervals"]


def test_compare_two_results_files(tmp_path):
    from tests.conftest import make_pipal_set
    pipal_set = make_pipal_set(tmp_path / "set", n_refs=5, n_dis=4, size=(8, 8), seed=3)  # intervals: 20 of 5 refs
    names = pipal_set["names"]
    mos = read_labels(pipal_set["list"], "pipal", "pipal").raw
    rng = np.random.default_rng(0)
    good = mos + rng.normal(0, 1, len(mos))
    bad = rng.normal(0, 1, len(mos))
    for name, scores in (("a.txt", good), ("b.txt", bad)):
        (tmp_path / name).write_text("".join(f"{n},{s}\n" for n, s in zip(names, scores)))
    out = compare_main([str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--list", pipal_set["list"],
                        "--bootstrap", "200", "--out", str(tmp_path / "cmp.json")])
    overall = out["overall"]
    assert overall["plcc"]["diff"] > 0.5 and overall["plcc"]["diff_interval"][0] > 0
    expected = compare_models(good, bad, (mos - mos.min()) / np.ptp(mos), [n[:5] for n in names], 200, 1919)
    assert overall["srcc"]["diff"] == pytest.approx(expected["srcc"]["diff"])
    assert json.loads((tmp_path / "cmp.json").read_text())["overall"]["n"] == len(names)
    (tmp_path / "c.txt").write_text("".join(f"{n},1\n" for n in names[1:]))
    with pytest.raises(AHIQError, match=rf"c\.txt: has no score for {names[0]}"):
        compare_main([str(tmp_path / "a.txt"), str(tmp_path / "c.txt"), "--list", pipal_set["list"]])
    # the same intervals' minimum as test.py: 6 images of 2 references get none, and say why
    short = compare_models(good[:6], bad[:6], mos[:6], [n[:5] for n in names[:6]], 200, 0)
    assert short["resamples"] == 0 and short["plcc"]["diff_interval"] == [None, None] and "too few" in short["note"]


def test_a_fitted_mapping_puts_scores_on_a_lists_mos_scale(tmp_path, tiny_ckpt, capsys):
    """test.py --fit_mapping on a list with MOS saves the rising logistic and the list's range; predict.py and
    test.py --mapping report scores in that list's units (DMOS stays DMOS)."""
    import predict
    from data.label_norm import LabelNorm
    from data.score_mapping import fit_mapping, load_mapping
    from tests.conftest import make_pipal_set
    data = make_pipal_set(tmp_path / "set", n_refs=3, n_dis=4, size=(40, 40), seed=5)
    common = ["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list", data["list"], "--ckpt",
              tiny_ckpt, "--crop_size", "32", "--n_ensemble", "1", "--no_pretrained", "--gpu_ids", "-1",
              "--num_workers", "0", "--checkpoints_dir", str(tmp_path), "--bootstrap", "0"]
    rng = np.random.default_rng(0)
    mos = read_labels(data["list"], "pipal", "pipal").raw
    scores = (mos - mos.min()) / np.ptp(mos) * 0.2 + 0.4 + rng.normal(0, 0.005, len(mos))
    mapping = fit_mapping(scores, mos, LabelNorm.fit(mos), data["list"], None)
    mapping.save(str(tmp_path / "m.json"))
    again = load_mapping(str(tmp_path / "m.json"))
    mapped = again(np.sort(scores))
    assert np.all(np.diff(mapped) >= 0) and mos.min() - 1 < mapped[0] and mapped[-1] < mos.max() + 1
    assert np.corrcoef(again(scores), mos)[0, 1] > 0.9 and "MOS, higher is better" in again.units
    dmos = LabelNorm.fit(100 - mos, lower_better=True)
    assert np.all(np.diff(fit_mapping(scores, 100 - mos, dmos, "d.txt", None)(np.sort(scores))) <= 0)  # DMOS falls
    with pytest.raises(AHIQError, match=r"backwards\.txt: no mapping fitted: the predictions rank the labels "
                                        r"backwards"):
        fit_mapping(-scores, mos, LabelNorm.fit(mos), "backwards.txt", None)
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(AHIQError, match=r"junk\.json: not a score mapping of this project"):
        predict.main(["--dis", f"{data['dis']}/{data['names'][0]}", "--ref", f"{data['ref']}/A0000.bmp",
                      "--mapping", str(tmp_path / "junk.json")])
    # through test.py: --mapping writes the scores on the mapping's scale beside the results
    applied = test_entry.main(common + ["--name", "apply", "--mapping", str(tmp_path / "m.json")])
    rows = [line.split(",") for line in Path(applied["mapped"]).read_text().splitlines()]
    raw = [line.split(",") for line in Path(applied["predictions"]).read_text().splitlines()]
    assert [r[0] for r in rows] == [r[0] for r in raw]
    np.testing.assert_allclose([float(r[1]) for r in rows], again(np.array([float(r[1]) for r in raw])), rtol=1e-6)
    # the API: load_scorer(mapping=...) returns the same numbers on that scale and says so; DMOS reads lower-better
    from engine.scorer import Metric, load_scorer
    pair = [(f"{data['dis']}/{data['names'][0]}", f"{data['ref']}/{data['names'][0][:5]}.bmp")]
    settings = dict(pretrained=False, crop_size=32, n_ensemble=1)
    plain = load_scorer(tiny_ckpt, str(tmp_path), **settings)
    with pytest.warns(UserWarning, match=r"m\.json: records no model digest"):  # fitted without weights: can't tell
        scaled = load_scorer(tiny_ckpt, str(tmp_path), mapping=str(tmp_path / "m.json"), **settings)
    np.testing.assert_allclose(scaled.score_files(pair), again(plain.score_files(pair)), rtol=1e-6)
    assert scaled.scale == again.units and "normalised" in plain.scale and not Metric(scaled).lower_better
    fit_mapping(scores, 100 - mos, dmos, "d.txt", None).save(str(tmp_path / "d.json"))
    with pytest.warns(UserWarning):
        assert Metric(load_scorer(tiny_ckpt, str(tmp_path), mapping=str(tmp_path / "d.json"), **settings)).lower_better
    with pytest.raises(AHIQError, match=r"junk\.json: not a score mapping"):
        load_scorer(tiny_ckpt, str(tmp_path), mapping=str(tmp_path / "junk.json"), **settings)
    # --fit_mapping: a file when the rising logistic fits this model's scores, else one line saying why
    probe = test_entry.main(common + ["--name", "probe"])
    fit = common + ["--name", "fit", "--fit_mapping", str(tmp_path / "tiny_map.json")]
    if probe["plcc_logistic"] is not None:
        assert test_entry.main(fit)["mapping"] == str(tmp_path / "tiny_map.json")
        assert load_mapping(str(tmp_path / "tiny_map.json")).n == len(data["names"])
    else:
        with pytest.raises(AHIQError, match=r"list\.txt: no mapping fitted: " + re.escape(probe["plcc_logistic_note"])):
            test_entry.main(fit)


def test_scores_of_random_backbones_say_so_everywhere(tmp_path, pipal_set, tiny_ckpt, capsys):
    """--no_pretrained: the metrics file, the log and predict.py's table carry the warning (the figures' titles
    too: they are drawn from the same text)."""
    import predict
    test_entry.main(["--test_ref_path", pipal_set["ref"], "--test_dis_path", pipal_set["dis"], "--test_list",
                     pipal_set["list"], "--ckpt", tiny_ckpt, "--checkpoints_dir", str(tmp_path), "--name", "r",
                     "--crop_size", "32", "--n_ensemble", "1", "--no_pretrained", "--gpu_ids", "-1",
                     "--bootstrap", "0"])
    saved = json.loads((tmp_path / "r" / "results_metrics.json").read_text())
    assert saved["warning"].startswith("RANDOM BACKBONES (--no_pretrained)")
    predict.main(["--dis", f"{pipal_set['dis']}/{pipal_set['names'][0]}", "--ref", f"{pipal_set['ref']}/A0000.bmp",
                  "--ckpt", tiny_ckpt, "--crop_size", "32", "--n_ensemble", "1", "--no_pretrained", "--gpu_ids", "-1"])
    assert "RANDOM BACKBONES" in capsys.readouterr().out


@pytest.mark.parametrize("change, problem", [
    ({"params": [0, 1, 0.5, 0.1]}, r"do not rise \(need b1 > b2 and a scale b4 > 0\)"),  # falling: reverses the scale
    ({"params": [1, 0, 0.5, 0]}, "do not rise"),  # a step
    ({"params": [1e308, -1e308, 0.5, 0.1]}, r"overflow \(not finite\) for scores between -1 and 2"),
    ({"params": [True, False, 0.5, 0.1]}, "params .*: expected a finite number"),
    ({"params": [1, 0, 0.5]}, "params .*: expected a list of 4 finite numbers"),
    ({"n": "abc"}, "n 'abc': expected an integer"), ({"n": None}, "n None: expected a value"),
    ({"n": [1]}, r"n \[1\]: expected an integer"), ({"n": 1e999}, "n inf: expected an integer"),
    ({"n": 0}, "n 0: expected at least 1"), ({"fitted_on": 3}, "fitted_on 3: expected a string"),
    ({"checkpoint": 3}, "checkpoint 3: expected a string"),
    ({"weights": "abc"}, "weights 'abc': expected digests")])
def test_a_mapping_file_is_checked_as_a_checkpoint_is(tmp_path, change, problem):
    """Every field of its type and a rising, finite logistic; a bad file is one line naming it, also through
    predict.py --mapping."""
    import predict
    from data.label_norm import LabelNorm
    from data.score_mapping import Mapping, load_mapping
    good = tmp_path / "good.json"
    Mapping((1.0, 0.0, 0.5, 0.1), LabelNorm(0.0, 100.0, False), "list.txt", 10, None, {"head": "a"}).save(str(good))
    assert load_mapping(str(good)).n == 10
    bad = tmp_path / "bad.json"
    text = json.dumps({**json.loads(good.read_text()), **change}).replace("Infinity", "1e999")
    bad.write_text(text)
    with pytest.raises(AHIQError, match=rf"bad\.json: .*{problem}"):
        load_mapping(str(bad))
    with pytest.raises(AHIQError, match=rf"bad\.json: .*{problem}"):
        predict.main(["--dis", "x.png", "--ref", "y.png", "--mapping", str(bad)])


def test_a_mapping_fitted_for_another_model_is_refused_by_its_weights(tmp_path, tiny_ckpt, tiny_factory):
    """A mapping records the digests of the weights it was fitted for; another model (here: the same path, other
    weights) is refused, named, unless allow_other_mapping / --allow_other_mapping."""
    import shutil

    from data.label_norm import LabelNorm
    from data.score_mapping import fit_mapping
    from engine.scorer import load_scorer
    from tests.test_jobs import _other_head
    from utils.checkpoint import save_weights
    ckpt = tmp_path / "model.pth"
    shutil.copy(tiny_ckpt, ckpt)
    settings = dict(pretrained=False, crop_size=32, n_ensemble=1)
    scorer = load_scorer(str(ckpt), str(tmp_path), **settings)
    mos = np.linspace(10, 90, 12)
    scores = 0.3 + 0.004 * mos + np.random.default_rng(0).normal(0, 0.01, 12)
    fit_mapping(scores, mos, LabelNorm.fit(mos), "list.txt", str(ckpt), scorer.weights()).save(str(tmp_path / "m.json"))
    assert load_scorer(str(ckpt), str(tmp_path), mapping=str(tmp_path / "m.json"), **settings).mapping is not None
    save_weights(str(ckpt), _other_head(tiny_factory))
    with pytest.raises(AHIQError, match=r"m\.json: fitted for another model than .*model\.pth \(the checkpoint's "
                                        r"weights changed\); .*--allow_other_mapping"):
        load_scorer(str(ckpt), str(tmp_path), mapping=str(tmp_path / "m.json"), **settings)
    other = load_scorer(str(ckpt), str(tmp_path), mapping=str(tmp_path / "m.json"), allow_other_mapping=True,
                        **settings)
    assert other.mapping is not None


def _write_results(path: Path, names: list[str], scores) -> str:
    path.write_text("".join(f"{n},{float(s)!r}\n" for n, s in zip(names, scores)))
    return str(path)


def test_compare_and_the_stats_api_on_degenerate_input(tmp_path, capsys):
    """Too short lists, identical or constant inputs, NaN, bad --seed/--bootstrap: one line each, or a result with
    None and its reason, never a traceback and never NaN in strict JSON."""
    from tests.conftest import make_pipal_set
    data = make_pipal_set(tmp_path / "set", n_refs=5, n_dis=4, size=(8, 8), seed=4)
    names, mos = data["names"], read_labels(data["list"], "pipal", "pipal").raw
    rng = np.random.default_rng(1)
    a = _write_results(tmp_path / "a.txt", names, mos + rng.normal(0, 50, len(mos)))
    args = ["--list", data["list"], "--bootstrap", "50"]
    with pytest.raises(AHIQError, match=r"a\.txt: given as both A and B"):
        compare_main([a, a, *args])
    same = _write_results(tmp_path / "same.txt", names, [float(line.split(",")[1]) for line in
                                                          Path(a).read_text().splitlines()])
    out = compare_main([a, same, *args, "--out", str(tmp_path / "same.json")])  # identical content, two files
    assert out["overall"]["srcc"]["williams_p"] is None
    assert "rank the images alike" in out["overall"]["srcc"]["williams_note"]
    json.loads((tmp_path / "same.json").read_text())  # strict JSON (allow_nan=False when written)
    flat = _write_results(tmp_path / "flat.txt", names, [0.5] * len(names))  # a constant model
    out = compare_main([a, flat, *args, "--out", str(tmp_path / "flat.json")])
    assert out["overall"]["plcc"]["b"] is None and "constant" in out["overall"]["plcc"]["williams_note"]
    assert "n/a" in capsys.readouterr().out
    nan = _write_results(tmp_path / "nan.txt", names, [float("nan")] + [0.5] * (len(names) - 1))
    with pytest.raises(AHIQError, match=r"nan\.txt:1: score 'nan' is not a finite number"):  # the file's reader
        compare_main([a, nan, *args])
    with pytest.raises(AHIQError, match=r"model B's scores: 1 of 20 values are NaN or infinite"):  # the API
        compare_models(mos, np.r_[np.nan, mos[1:]], mos)
    with pytest.raises(AHIQError, match=r"--bootstrap -5: .*at least 0"):
        compare_main([a, flat, "--list", data["list"], "--bootstrap", "-5", "--seed", "0"])
    with pytest.raises(AHIQError, match=r"--seed -1: .*0 to 4294967295"):
        compare_main([a, flat, "--list", data["list"], "--seed", "-1"])
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("".join(f"{n},{m}\n" for n, m in zip(names[:2], mos[:2])))
    with pytest.raises(AHIQError, match=r"tiny\.txt: has 2 image\(s\) with a score; a comparison needs 5 or more"):
        compare_main([a, flat, "--list", str(tiny)])
    names_only = _write_results(tmp_path / "names_only.txt", names, [0.5] * len(names))
    Path(names_only).write_text("".join(f"{n}\n" for n in names))
    with pytest.raises(AHIQError, match=r"names_only\.txt: has no scores; a comparison needs 1 or more scored images: "
                                        r"give a results file of test\.py"):
        compare_main([a, names_only, *args])
    # the API: a NaN prediction is refused, not an interval around a NaN point
    with pytest.raises(AHIQError, match="the predictions: 1 of 20 values are NaN"):
        bootstrap_intervals(np.r_[np.nan, mos[1:]], mos, None, n_boot=50)
    assert williams_test(0.5, 0.5, 1.0, 20) is None and williams_test(0.5, 0.4, 0.3, 3) is None


def _hand_fit(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """An independent least-squares fit of the 4-parameter logistic (scipy, unconstrained, from a good start)."""
    from scipy import optimize

    def curve(x, b1, b2, b3, b4):
        return (b1 - b2) / (1 + np.exp(-(x - b3) / b4)) + b2
    return optimize.curve_fit(curve, pred, label, p0=[label.max(), label.min(), np.median(pred), 0.1],
                              maxfev=20000)[0]


def test_p1401_rmse_after_the_mapping_and_the_outlier_ratio_by_hand():
    from utils.stats import p1401
    rng = np.random.default_rng(3)
    pred = rng.uniform(0, 1, 60)
    label = (0.9 - 0.1) / (1 + np.exp(-(pred - 0.5) / 0.12)) + 0.1 + rng.normal(0, 0.03, 60)
    span = 80.0  # the list's MOS range: RMSE in MOS units is the normalised one times it
    std = np.full(60, 0.03 * span)  # two std: about 5% outliers
    b1, b2, b3, b4 = _hand_fit(pred, label)
    error = ((b1 - b2) / (1 + np.exp(-(pred - b3) / b4)) + b2 - label) * span
    out = p1401(pred, label, span, std)
    assert out["rmse_mapped"] == pytest.approx(np.sqrt(np.sum(error ** 2) / (60 - 4)), rel=1e-4)
    assert out["outliers"] == int(np.sum(np.abs(error) > 2 * std)) and out["outlier_ratio"] == out["outliers"] / 60
    assert 0 < out["outlier_ratio"] < 0.2
    without = p1401(pred, label, span)
    assert without["outlier_ratio"] is None and "no per-image std" in without["p1401_note"]
    assert p1401(pred[:4], label[:4])["rmse_mapped"] is None  # no degree of freedom left


def test_p1401_tests_between_two_models_by_hand():
    from scipy import stats

    from utils.stats import mapped_tests
    rng = np.random.default_rng(4)
    label = rng.uniform(0, 1, 80)
    a = label + rng.normal(0, 0.05, 80)
    b = label + rng.normal(0, 0.15, 80)
    out = mapped_tests(a, b, label, units=10.0)
    mapped = {}
    for name, pred in (("a", a), ("b", b)):
        b1, b2, b3, b4 = _hand_fit(pred, label)
        mapped[name] = (b1 - b2) / (1 + np.exp(-(pred - b3) / b4)) + b2
    r = {k: np.corrcoef(v, label)[0, 1] for k, v in mapped.items()}
    z = (np.arctanh(r["a"]) - np.arctanh(r["b"])) / np.sqrt(2 / 77)
    assert out["plcc_mapped"]["fisher_z"] == pytest.approx(z, rel=1e-3)
    assert out["plcc_mapped"]["p"] == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-2)
    assert out["plcc_mapped"]["p"] < 0.01
    rmse = {k: np.sqrt(np.sum((v - label) ** 2) / 76) * 10 for k, v in mapped.items()}
    f = (rmse["a"] / rmse["b"]) ** 2
    assert out["rmse_mapped"]["a"] == pytest.approx(rmse["a"], rel=1e-4)
    assert out["rmse_mapped"]["f"] == pytest.approx(f, rel=1e-3)
    assert out["rmse_mapped"]["p"] == pytest.approx(2 * stats.f.cdf(f, 76, 76), rel=1e-2)  # A better: F < 1
    same = mapped_tests(a, a, label)
    assert same["plcc_mapped"]["p"] == pytest.approx(1.0) and same["rmse_mapped"]["p"] == pytest.approx(1.0)


def test_test_py_reports_p1401_with_a_std_column(tmp_path, tiny_ckpt):
    """A CSV list with a std column: the metrics file holds RMSE after the mapping (or why not) and the outlier
    ratio's inputs; a std that is not a number is refused naming the row."""
    from tests.conftest import make_pipal_set
    data = make_pipal_set(tmp_path / "set", n_refs=2, n_dis=4, size=(40, 40), seed=6)
    rows = [line.split(",") for line in Path(data["list"]).read_text().splitlines()]
    csv_list = tmp_path / "list.csv"
    csv_list.write_text("dist_img,ref_img,dmos,std\n" + "".join(f"{n},{n[:5]}.bmp,{m},{0.5 + i % 3}\n"
                                                              for i, (n, m) in enumerate(rows)))
    args = ["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list", str(csv_list),
            "--list_format", "csv", "--label_direction", "higher_better", "--ckpt", tiny_ckpt, "--crop_size", "32",
            "--no_pretrained", "--gpu_ids", "-1", "--num_workers", "0", "--n_ensemble", "1", "--bootstrap", "0",
            "--checkpoints_dir", str(tmp_path), "--name", "run"]
    result = test_entry.main(args)
    assert "rmse_mapped" in result and "outlier_ratio" in result
    assert (result["rmse_mapped"] is None) == (result["p1401_note"] is not None and result["outlier_ratio"] is None)
    csv_list.write_text(csv_list.read_text().replace(",1.5\n", ",abc\n", 1))
    with pytest.raises(AHIQError, match=r"list\.csv: row \d+: std 'abc' is not a non-negative number"):
        test_entry.main([*args, "--overwrite"])


def test_compare_takes_test_py_split_options_and_prints_per_group_tables(tmp_path, capsys):
    """A researcher compares two models on a split's test part as test.py scored it, without writing a sub-list;
    the per-group table is printed, with the type names of the list's naming."""
    from data.splits import load_or_create_splits
    from tests.conftest import make_pipal_set
    data = make_pipal_set(tmp_path / "set", n_refs=10, n_dis=6, size=(8, 8), seed=7)
    names, mos = data["names"], read_labels(data["list"], "pipal", "pipal").raw
    labels = read_labels(data["list"], "pipal", "pipal")
    splits = load_or_create_splits(str(tmp_path / "splits.json"), labels, (0.5, 0.0, 0.5), 2, 3)
    rng = np.random.default_rng(2)
    a = _write_results(tmp_path / "a.txt", names, mos + rng.normal(0, 50, len(mos)))
    b = _write_results(tmp_path / "b.txt", names, mos + rng.normal(0, 300, len(mos)))
    out = compare_main([a, b, "--list", data["list"], "--bootstrap", "50", "--split_file",
                        str(tmp_path / "splits.json"), "--split_index", "1"])
    test_refs = set(splits[1]["test"])
    assert out["overall"]["n"] == sum(ref in test_refs for ref in labels.refs) < len(names)
    assert out["split"].endswith("part test") and "by_group" in out
    printed = capsys.readouterr().out
    assert "per group (pipal-style file names)" in printed and "per subtype" in printed
    with pytest.raises(AHIQError, match="--split_part val has no effect without --split_file"):
        compare_main([a, b, "--list", data["list"], "--split_part", "val"])
