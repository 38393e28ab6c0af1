"""Numbers a researcher reports without a second check: a pair's score does not depend on its batch, position or
input form; one meaning of "best"; a logistic fit that cannot flatter a backwards ranking; checkpoints that refuse
other backbones; model defaults edited in options/ carried by new checkpoints, never by released ones."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from data.images import read_rgb
from engine.scorer import Metric, Scorer, load_scorer
from models import PAPER, read_checkpoint
from models.tiny import TINY_RESNET
from tests.conftest import make_pipal_set, policy, train_args
from utils.checkpoint import save_weights
from utils.errors import AHIQError
from utils.metrics import improves, iqa_metrics

REPO = Path(__file__).resolve().parents[1]


def test_a_pair_scores_the_same_in_any_order_batch_and_input_form(tiny_factory, tmp_path):
    data = make_pipal_set(tmp_path, n_refs=2, n_dis=1, size=(40, 48), seed=3)
    (da, db), (ra, rb) = [f"{data['dis']}/{n}" for n in data["names"]], [f"{data['ref']}/A000{i}.bmp" for i in (0, 1)]
    scorer = Scorer(tiny_factory(8), policy(32, 12), 7)  # 12 crops: random windows
    metric = Metric(scorer)
    paths = metric([da, db], [ra, rb]).numpy()
    assert scorer.policy.windows(40, 48, 1) != scorer.policy.windows(40, 48, 2)  # random windows, keyed
    forms = {"reversed": metric([db, da], [rb, ra]).numpy()[::-1],
             "alone": np.array([metric(da, ra).item(), metric(db, rb).item()]),
             "arrays": metric([read_rgb(da), read_rgb(db)], [read_rgb(ra), read_rgb(rb)]).numpy(),
             "pil": metric([Image.open(da), Image.open(db)], [Image.open(ra), Image.open(rb)]).numpy(),
             "tensor": metric(*(torch.stack([torch.from_numpy(read_rgb(p)).permute(2, 0, 1) / 255 for p in pair])
                                for pair in ((db, da), (rb, ra)))).numpy()[::-1],
             "renamed": scorer.score_files([(da, shutil.copy(ra, tmp_path / "other_name.png")), (db, rb)])}
    for form, scores in forms.items():
        np.testing.assert_allclose(scores, paths, rtol=1e-5, err_msg=form)


def test_best_metric_rules():
    assert improves("srcc_or_plcc", 0.5, 0.9, 0.6, 0.8) and not improves("srcc", 0.5, 0.9, 0.6, 0.8)
    assert improves("plcc", 0.5, 0.9, 0.6, 0.8) and improves("main_score", 0.5, 0.95, 0.6, 0.8)
    assert not improves("main_score", 0.5, 0.85, 0.6, 0.8)


def test_best_pth_the_log_and_the_figure_name_one_epoch(train_sets, tmp_path):
    state = train.main(train_args(train_sets, tmp_path, "run", "--n_epoch", "3", "--best_metric", "srcc"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    srcc = [r["val_srcc"] for r in rows]
    expected = 1 + int(np.argmax(srcc))  # the first epoch with the highest SRCC, counted from 1
    assert [r["epoch"] for r in rows if r["best"]][-1] == expected == state.best_epoch
    best = torch.load(tmp_path / "run" / "best.pth", weights_only=True)
    assert best["ahiq"]["epochs_trained"] == expected and best["epoch"] == expected - 1  # official key: from 0
    assert best["ahiq"]["best_metric"] == "srcc" and state.best_srcc == pytest.approx(max(srcc))
    assert f"best.pth holds epoch {expected}" in (tmp_path / "run" / "log.txt").read_text()


def test_the_logistic_fit_never_flatters_a_backwards_ranking():
    rng = np.random.default_rng(0)
    pred = rng.uniform(0, 1, 200)
    mos = 1 / (1 + np.exp(-(pred - 0.5) * 8)) + rng.normal(0, 0.05, 200)
    good = iqa_metrics(pred, mos)
    assert good["plcc_logistic"] > good["plcc"] > 0.8 and good["plcc_logistic_note"] is None
    backwards = iqa_metrics(pred, 1 - mos)  # DMOS read as MOS
    assert backwards["plcc"] < -0.8 and backwards["plcc_logistic"] is None
    assert "backwards" in backwards["plcc_logistic_note"] and "--label_direction" in backwards["plcc_logistic_note"]


def test_a_checkpoint_refuses_other_backbones(tiny_factory, tmp_path):
    path = str(tmp_path / "tiny.pth")
    save_weights(path, tiny_factory(8))  # random backbones drawn from seed 1919
    record = torch.load(path, weights_only=True)["ahiq"]["backbones"]
    assert record["vit"]["source"] == "random" and record["vit"]["seed"] == 1919 and len(record["cnn"]["digest"]) == 16
    load_scorer(path, pretrained=False, seed=1919)  # the same backbones
    with pytest.raises(AHIQError, match=r"tiny\.pth: trained on the vit backbone random \(seed 1919\).*random "
                                        r"\(seed 7\).*--allow_other_backbones"):
        load_scorer(path, pretrained=False, seed=7)
    load_scorer(path, pretrained=False, seed=7, allow_other_backbones=True)


def test_resume_refuses_other_backbones(train_sets, tmp_path, capsys):
    train.main(train_args(train_sets, tmp_path, "run", "--n_epoch", "1"))
    with pytest.raises(AHIQError, match=r"last\.pth: trained on the vit backbone random \(seed 1919\)"):
        train.main(train_args(train_sets, tmp_path, "run", "--n_epoch", "2", "--resume", "--vit_weights",
                              _tiny_vit_file(tmp_path)))


def _tiny_vit_file(tmp_path: Path) -> str:
    import timm
    from safetensors.torch import save_file

    from models.tiny import TINY_VIT
    path = str(tmp_path / "vit.safetensors")
    torch.manual_seed(0)
    save_file(timm.create_model(TINY_VIT[8], pretrained=False).state_dict(), path)
    return path


EDITED = """
import json, sys
import train
from options.test_options import parse_test_options
from engine.runtime import scoring_checkpoint
state = train.main(sys.argv[2:])
fusion = {key: scoring_checkpoint(parse_test_options(["--ckpt", sys.argv[1] + path])).config.fusion
          for key, path in (("trained", "/best.pth"), ("official", "/../../official.pth"))}
print(json.dumps(fusion))
"""


@pytest.mark.slow
def test_an_edited_default_in_options_is_carried_by_new_checkpoints_only(train_sets, tmp_path, tiny_factory):
    """The ablation workflow of docs/ablations.md in a copy of the checkout: edit --fusion's default in options/,
    train, score without switches; an official-format file stays the paper's model."""
    copy = tmp_path / "ahiq"
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(".venv", ".git", "checkpoints", "__pycache__"))
    options = copy / "options" / "base_options.py"
    text = options.read_text()
    assert text.count('fusion: str = option("deform"') == 1  # the option's one definition
    options.write_text(text.replace('fusion: str = option("deform"', 'fusion: str = option("conv"'))
    run = tmp_path / "ckpts" / "edited"
    run.mkdir(parents=True)
    official = tiny_factory(8)  # the paper's fusion; an official-format file holds no configuration
    torch.save({"regressor_model_state_dict": official.regressor.state_dict(),
                "deform_net_model_state_dict": official.deform_net.state_dict()}, tmp_path / "official.pth")
    args = train_args(train_sets, tmp_path / "ckpts", "edited", "--n_epoch", "1")
    env = {**os.environ, "PYTHONPATH": str(copy)}
    out = subprocess.run([sys.executable, "-c", EDITED, str(run), *args], cwd=copy, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"trained": "conv", "official": PAPER.fusion}
    assert torch.load(run / "best.pth", weights_only=True)["ahiq"]["model"]["fusion"] == "conv"


def test_switches_given_must_agree_and_defaults_do_not_count(tiny_ckpt):
    from engine.runtime import scoring_checkpoint
    from options.test_options import parse_test_options
    opt = parse_test_options(["--ckpt", tiny_ckpt, "--gpu_ids", "-1"])
    assert opt.switches_given == () and scoring_checkpoint(opt).config.resnet_name == TINY_RESNET  # not the default
    with pytest.raises(AHIQError, match="trained with fusion deform, but fusion conv was given"):
        scoring_checkpoint(parse_test_options(["--ckpt", tiny_ckpt, "--fusion", "conv", "--gpu_ids", "-1"]))
    assert read_checkpoint(None).config == PAPER


def test_help_shows_each_default_once_and_truly(capsys):
    from options.test_options import TestConfig
    text = " ".join(TestConfig.parser().format_help().split())
    assert "(default: True)" not in text and "(default: None)" not in text
    assert text.count("(default: 20)") == 1 and "--fusion {deform,conv,none} how CNN features are fused (default: " \
        "deform)" in text
