"""AHIQ the way IQA researchers use it: torch.hub.load on a local checkout (random, or fetched with sha256 checks
from a local server), the pyiqa-style metric on every input form against test.py, and as a differentiable loss."""
from __future__ import annotations

import functools
import http.server
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import test as test_entry
from data.images import read_rgb
from engine.scorer import Metric, load_scorer
from tests.conftest import make_pipal_set
from utils.checkpoint import save_weights
from utils.errors import AHIQError

REPO = Path(__file__).resolve().parents[1]


def test_hub_metric_scores_what_test_py_scores(tmp_path, tiny_ckpt):
    data = make_pipal_set(tmp_path / "set", n_refs=2, n_dis=2, size=(40, 48), seed=3)
    out = test_entry.main(["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list", data["list"],
                         "--ckpt", tiny_ckpt, "--crop_size", "32", "--n_ensemble", "12", "--gpu_ids", "-1",
                         "--num_workers", "0", "--checkpoints_dir", str(tmp_path), "--name", "scored",
                         "--no_pretrained"])
    expected = [float(line.split(",")[1]) for line in Path(out["predictions"]).read_text().splitlines()]
    metric = torch.hub.load(str(REPO), "ahiq", source="local", pretrained=False, ckpt=tiny_ckpt, n_ensemble=12,
                            crop_size=32)
    assert isinstance(metric, Metric) and metric.lower_better is False and metric.labels_are_dmos is False
    pairs = [(f"{data['dis']}/{n}", f"{data['ref']}/{n[:5]}.bmp") for n in data["names"]]
    scores = metric([d for d, _ in pairs], [r for _, r in pairs])
    assert scores.tolist() == pytest.approx(expected, rel=1e-6)
    assert len(set(expected)) == len(expected)  # the pairs differ: equal lists would not be a coincidence
    # mapping=: the same scores on a fitted scale (here a DMOS one: the metric then says lower is better)
    from data.label_norm import LabelNorm
    from data.score_mapping import fit_mapping
    fitted_on = np.linspace(0.0, 0.4, 12)  # a gentle slope over the scores: rounding of 1e-6 stays 1e-6
    dmos = 90 - 80 / (1 + np.exp(-(fitted_on - 0.2) / 0.1))  # falls as scores rise
    mapping = fit_mapping(fitted_on, dmos, LabelNorm.fit(dmos, lower_better=True), "d.txt", tiny_ckpt,
                          metric.scorer.weights())  # fitted for this model, as test.py --fit_mapping records it
    mapping.save(str(tmp_path / "dmos.json"))
    mapped = torch.hub.load(str(REPO), "ahiq", source="local", pretrained=False, ckpt=tiny_ckpt, n_ensemble=12,
                            crop_size=32, mapping=str(tmp_path / "dmos.json"))
    assert mapped.lower_better and "DMOS" in mapped.scorer.scale
    assert mapped([d for d, _ in pairs], [r for _, r in pairs]).tolist() == pytest.approx(
        mapping(np.array(expected)).tolist(), rel=1e-5)


USER_SCRIPT = """
import sys
import torch
import models, utils                      # the user's own modules, imported before
metric = torch.hub.load(sys.argv[1], "ahiq", source="local", pretrained=False, ckpt=sys.argv[2], n_ensemble=2,
                        crop_size=32)
import models.extra                       # and used after
assert models.WHO == "user" and models.extra.VALUE == 7 and utils.helper() == 42, (models, utils)
assert "data" not in sys.modules and "scoring" not in sys.modules, "the checkout's modules leaked"
x = torch.rand(1, 3, 40, 40)
print(float(metric(x, x * 0.5)))
"""


@pytest.mark.slow
def test_hub_load_leaves_the_callers_own_models_and_utils_alone(tmp_path, tiny_ckpt):
    user = tmp_path / "user"
    (user / "models").mkdir(parents=True)
    (user / "models" / "__init__.py").write_text("WHO = 'user'\n")
    (user / "models" / "extra.py").write_text("VALUE = 7\n")
    (user / "utils.py").write_text("def helper():\n    return 42\n")
    (user / "script.py").write_text(USER_SCRIPT)
    proc = subprocess.run([sys.executable, "script.py", str(REPO), tiny_ckpt], cwd=user, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert np.isfinite(float(proc.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def pair_and_ckpt(tmp_path_factory, tiny_ckpt):
    root = tmp_path_factory.mktemp("metric")
    data = make_pipal_set(root / "set", n_refs=1, n_dis=2, size=(40, 48), seed=8)
    return data, tiny_ckpt


@pytest.mark.parametrize("n_ensemble", [5, 12])
def test_every_input_form_scores_what_test_py_scores(pair_and_ckpt, tmp_path, n_ensemble):
    data, ckpt = pair_and_ckpt
    out = test_entry.main(["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list", data["list"],
                         "--ckpt", ckpt, "--crop_size", "32", "--n_ensemble", str(n_ensemble), "--gpu_ids", "-1",
                         "--num_workers", "0", "--checkpoints_dir", str(tmp_path), "--name", "scored",
                         "--no_pretrained"])
    expected = float(Path(out["predictions"]).read_text().splitlines()[1].split(",")[1])
    metric = Metric(load_scorer(ckpt, pretrained=False, crop_size=32, n_ensemble=n_ensemble))
    dis_path, ref_path = f"{data['dis']}/{data['names'][1]}", f"{data['ref']}/A0000.bmp"
    assert metric(dis_path, ref_path).item() == pytest.approx(expected, rel=1e-6)
    assert metric([dis_path], [ref_path]).tolist() == pytest.approx([expected], rel=1e-6)
    if n_ensemble <= 9:  # fixed windows: every form crops the same pixels; random ones are seeded by the file name
        dis, ref = read_rgb(dis_path), read_rgb(ref_path)
        forms = [(dis, ref), (Image.fromarray(dis), Image.fromarray(ref)),
                 (torch.from_numpy(dis).permute(2, 0, 1)[None].float() / 255,
                  torch.from_numpy(ref).permute(2, 0, 1)[None].float() / 255)]
        for d, r in forms:
            assert metric(d, r).item() == pytest.approx(expected, rel=1e-5), type(d)
    with pytest.raises(AHIQError, match=r"dis: expected file paths, PIL images, HxWx3 uint8 RGB arrays or "
                                         r"tensors, got float32 array"):
        metric(np.zeros((40, 48, 3), np.float32), np.zeros((40, 48, 3), np.float32))


def test_as_loss_is_differentiable_with_respect_to_the_distorted_image(tiny_ckpt):
    metric = Metric(torch.hub.load(str(REPO), "ahiq", source="local", pretrained=False, ckpt=tiny_ckpt, n_ensemble=5,
                                   crop_size=32).scorer, as_loss=True)
    metric.net.double()
    g = torch.Generator().manual_seed(0)
    dis = torch.rand(2, 3, 40, 40, generator=g, dtype=torch.float64).requires_grad_(True)
    ref = torch.rand(2, 3, 40, 40, generator=g, dtype=torch.float64)
    scores = metric(dis, ref)
    scores.sum().backward()
    assert dis.grad is not None and torch.isfinite(dis.grad).all() and dis.grad.abs().sum() > 0
    assert all(p.grad is None for p in metric.net.parameters())  # the metric itself is not trained
    v = torch.randn(dis.shape, generator=g, dtype=torch.float64) * 0.1
    eps = 1e-7  # small: ReLU, max-pool and bilinear sampling have kinks a larger step would cross
    with torch.no_grad():
        numeric = (metric(dis + eps * v, ref).sum() - metric(dis - eps * v, ref).sum()) / (2 * eps)
    assert numeric.item() == pytest.approx((dis.grad * v).sum().item(), rel=1e-3, abs=1e-9)


def test_minimising_the_loss_raises_the_score_of_a_distorted_image(tiny_ckpt):
    """The documented way to train against AHIQ: a few Adam steps on ``metric.loss`` (1 - score) raise the score of
    the distorted image; the loss without as_loss is refused."""
    metric = Metric(torch.hub.load(str(REPO), "ahiq", source="local", pretrained=False, ckpt=tiny_ckpt, n_ensemble=5,
                                   crop_size=32).scorer, as_loss=True)
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(1, 3, 40, 40, generator=g)
    dis = (ref + 0.3 * torch.randn(ref.shape, generator=g)).clamp(0, 1).requires_grad_(True)
    before = metric(dis, ref).item()
    optimiser = torch.optim.Adam([dis], lr=1e-3)
    for _ in range(5):
        optimiser.zero_grad()
        loss = metric.loss(dis, ref)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            dis.clamp_(0, 1)  # images stay in [0, 1]
    after = metric(dis, ref).item()
    assert after > before and metric.loss(dis, ref).item() == pytest.approx(1 - after, rel=1e-6)
    with pytest.raises(AHIQError, match="Metric.loss needs as_loss=True"):
        Metric(metric.scorer).loss(dis, ref)
    for call in (lambda: metric(dis, ref, return_maps=True), lambda: metric("d.png", "r.png")):
        with pytest.raises(AHIQError, match=r"as_loss=True scores tensors.*no files, no return_maps"):
            call()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_pretrained_is_fetched_with_sha256_checks_and_offline_is_one_line(tmp_path, model_factory, backbone_files,
                                                                          monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    save_weights(str(served / "ckpt.pth"), model_factory(8))  # the paper's model: the pinned backbones are fetched
    (served / "vit.safetensors").symlink_to(backbone_files[8])
    save_file(torch.load(backbone_files["resnet"], weights_only=True), str(served / "resnet.safetensors"))
    import hashlib
    sha = hashlib.sha256((served / "ckpt.pth").read_bytes()).hexdigest()[:8]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    for var, name in (("AHIQ_CKPT_URL", "ckpt.pth"), ("AHIQ_VIT8_URL", "vit.safetensors"),
                      ("AHIQ_RESNET_URL", "resnet.safetensors")):
        monkeypatch.setenv(var, f"{base}/{name}")
    cache = tmp_path / "cache"
    try:
        monkeypatch.setenv("AHIQ_CKPT_SHA256", "00000000")
        with pytest.raises(AHIQError, match=r"ckpt\.pth: sha256 does not start with 00000000.*nothing was written"):
            torch.hub.load(str(REPO), "ahiq", source="local", cache_dir=str(cache), n_ensemble=1, crop_size=32)
        assert not list(cache.rglob("*.pth*"))
        monkeypatch.setenv("AHIQ_CKPT_SHA256", sha)
        metric = torch.hub.load(str(REPO), "ahiq", source="local", cache_dir=str(cache), n_ensemble=1, crop_size=32)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert (cache / "ahiq_pipal" / "AHIQ_vit_p8_epoch33.pth").read_bytes() == (served / "ckpt.pth").read_bytes()
    x = torch.rand(1, 3, 40, 40)
    first = metric(x, x)
    again = torch.hub.load(str(REPO), "ahiq", source="local", cache_dir=str(cache), n_ensemble=1, crop_size=32)
    assert again(x, x).item() == pytest.approx(first.item())  # from the cache: the server is gone
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    monkeypatch.setenv("AHIQ_CKPT_URL", f"http://127.0.0.1:{closed}/ckpt.pth")
    with pytest.raises(AHIQError, match=r"cannot download http://127\.0\.0\.1:\d+/ckpt\.pth \(offline\?.*download\.sh"):
        torch.hub.load(str(REPO), "ahiq", source="local", cache_dir=str(tmp_path / "empty"))


def test_a_command_line_name_given_to_the_api_is_named_with_its_python_spelling(tmp_path):
    from engine.scorer import load_scorer
    with pytest.raises(AHIQError, match=r"unknown scoring setting\(s\) no_pretrained \(in Python: pretrained=False\)"):
        load_scorer(checkpoints_dir=str(tmp_path), no_pretrained=True)  # named before the missing run folder


def test_the_api_builds_no_parser(tiny_ckpt, monkeypatch):
    """load_scorer and its settings come from the option definitions, not from a command line: no ArgumentParser
    is made (a refused setting is named from the same definitions)."""
    import argparse

    from engine.scorer import load_scorer

    def refuse(*args, **kwargs):
        raise AssertionError("the API built an ArgumentParser")

    monkeypatch.setattr(argparse.ArgumentParser, "__init__", refuse)
    scorer = load_scorer(tiny_ckpt, pretrained=False, n_ensemble=3, crop_size=32)
    assert scorer.policy.n == 3 and scorer.crop_size == 32
    with pytest.raises(AHIQError, match="n_ensemble=0: expected at least 1"):
        load_scorer(tiny_ckpt, pretrained=False, n_ensemble=0)
