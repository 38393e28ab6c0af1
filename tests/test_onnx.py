"""The ONNX export (tools/export_onnx.py) scores exactly like the model, in ONNX Runtime alone and through
predict.py and the API (--backend onnxruntime), and refuses what it cannot do in one line."""
from __future__ import annotations

import builtins
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import predict
from engine.scorer import load_scorer
from models import BackboneSource, ModelConfig, build_from_config
from models.tiny import TINY_RESNET, TINY_VIT
from tests.conftest import FIXTURES, needs_fixtures
from tools.export_onnx import main as export_main
from utils.checkpoint import save_weights
from utils.errors import AHIQError
from utils.records import file_digest

pytest.importorskip("onnxruntime", reason="ONNX Runtime is an optional extra (requirements-onnx.txt)")
onnx = pytest.importorskip("onnx", reason="ONNX is an optional extra (requirements-onnx.txt)")

# ONNX Runtime alone, in a process that never imports this project: the graph and its metadata are all it needs.
STANDALONE = """
import json, sys
import numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = {k: json.loads(v) for k, v in s.get_modelmeta().custom_metadata_map.items()}
crops = np.load(sys.argv[2])
print(json.dumps({"scores": s.run(["score"], {"dis": crops["dis"], "ref": crops["ref"]})[0].tolist(),
                  "crop_size": meta["crop_size"], "modules": sorted(m for m in sys.modules if m.split(".")[0] in
                  ("models", "engine", "data", "utils", "options"))}))
"""


def _standalone_matches(onnx_file: Path, model: torch.nn.Module, batch: int, crop: int, tmp_path: Path) -> dict:
    """Random crops scored by ONNX Runtime in a process without this project equal ``model``'s (1e-5); returns what
    that process read (the file's crop size, the project modules it imported)."""
    g = torch.Generator().manual_seed(3)
    dis, ref = (torch.rand(batch, 3, crop, crop, generator=g) for _ in range(2))
    np.savez(tmp_path / "crops.npz", dis=dis.numpy(), ref=ref.numpy())
    out = subprocess.run([sys.executable, "-I", "-c", STANDALONE, str(onnx_file), str(tmp_path / "crops.npz")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    with torch.no_grad():
        expected = model(dis, ref).view(-1).numpy()
    np.testing.assert_allclose(got["scores"], expected, rtol=1e-5, atol=1e-7)
    return got


def _tiny_checkpoint(path: Path, **switches) -> torch.nn.Module:
    config = ModelConfig(8, vit_name=TINY_VIT[8], resnet_name=TINY_RESNET, head_width=16, crop_size=32, **switches)
    model = build_from_config(config, BackboneSource(pretrained=False), seed=1919).eval()
    save_weights(str(path), model, meta={"label_norm": {"mos_min": 1.0, "mos_max": 5.0}})
    return model


@pytest.mark.slow
@pytest.mark.parametrize("switches", [{}, {"fusion": "conv", "pooling": "mean"}])
def test_an_export_scores_like_the_model_in_onnx_runtime_alone(tmp_path, switches):
    model = _tiny_checkpoint(tmp_path / "tiny.pth", **switches)
    result = export_main(["--ckpt", str(tmp_path / "tiny.pth"), "--out", str(tmp_path / "tiny.onnx"),
                          "--no_pretrained"])
    assert max(result["max_rel_diff"].values()) <= 1e-5
    got = _standalone_matches(tmp_path / "tiny.onnx", model, 5, 32, tmp_path)
    assert got["modules"] == [] and got["crop_size"] == 32


def test_the_export_records_what_it_is_and_refuses_a_failed_check(tmp_path):
    _tiny_checkpoint(tmp_path / "tiny.pth")
    export_main(["--ckpt", str(tmp_path / "tiny.pth"), "--out", str(tmp_path / "tiny.onnx"), "--no_pretrained"])
    from models.onnx_runtime import read_metadata
    meta = read_metadata(str(tmp_path / "tiny.onnx"))
    assert meta["checkpoint_sha256"] == file_digest(str(tmp_path / "tiny.pth")) and meta["model"]["head_width"] == 16
    assert meta["label_norm"]["mos_max"] == 5.0 and meta["backbones"]["vit"]["source"] == "random"
    with pytest.raises(AHIQError, match=r"bad\.onnx: ONNX Runtime's scores differ from PyTorch's by .*nothing was "
                                        r"written"):
        export_main(["--ckpt", str(tmp_path / "tiny.pth"), "--out", str(tmp_path / "bad.onnx"), "--no_pretrained",
                     "--tolerance", "-1"])
    assert sorted(p.name for p in tmp_path.iterdir() if "bad" in p.name) == []


def test_predict_and_the_api_score_with_onnx_runtime_as_with_pytorch(tmp_path, pipal_set):
    _tiny_checkpoint(tmp_path / "tiny.pth")
    export_main(["--ckpt", str(tmp_path / "tiny.pth"), "--out", str(tmp_path / "tiny.onnx"), "--no_pretrained"])
    common = ["--dis_dir", pipal_set["dis"], "--ref_dir", pipal_set["ref"], "--n_ensemble", "12", "--gpu_ids", "-1",
              "--num_workers", "0", "--mos_scale"]
    torch_scores = predict.main(common + ["--ckpt", str(tmp_path / "tiny.pth"), "--no_pretrained"])
    onnx_scores = predict.main(common + ["--ckpt", str(tmp_path / "tiny.onnx"), "--backend", "onnxruntime"])
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-5)
    scorer = load_scorer(str(tmp_path / "tiny.onnx"), backend="onnxruntime", n_ensemble=12)
    pairs = [(f"{pipal_set['dis']}/{n}", f"{pipal_set['ref']}/{n[:5]}.bmp") for n in pipal_set["names"]]
    np.testing.assert_allclose(scorer.to_mos(scorer.score_files(pairs)), torch_scores, rtol=1e-5)
    with pytest.raises(AHIQError, match=r"--backend onnxruntime needs --ckpt FILE\.onnx .*\(no --maps\)"):
        predict.main(common + ["--ckpt", str(tmp_path / "tiny.onnx"), "--backend", "onnxruntime", "--maps",
                               str(tmp_path / "maps")])
    with pytest.raises(AHIQError, match=r"tiny\.onnx: exported at crop size 32; crop_size 48 needs another export"):
        load_scorer(str(tmp_path / "tiny.onnx"), backend="onnxruntime", crop_size=48)


def test_without_onnx_runtime_it_is_one_line(tmp_path, monkeypatch):
    real = builtins.__import__

    def no_ort(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(AHIQError, match=r"ONNX Runtime is not installed: pip install -r requirements-onnx\.txt"):
        load_scorer(str(tmp_path / "x.onnx"), backend="onnxruntime")


@needs_fixtures()
def test_real_kadid_images_score_alike_in_both_backends(tmp_path):
    _tiny_checkpoint(tmp_path / "tiny.pth")
    export_main(["--ckpt", str(tmp_path / "tiny.pth"), "--out", str(tmp_path / "tiny.onnx"), "--no_pretrained"])
    k = FIXTURES / "kadid10k"
    common = ["--dis", str(k / "I01_01_05.png"), "--ref", str(k / "I01.png"), "--n_ensemble", "20", "--gpu_ids",
              "-1", "--num_workers", "0"]
    a = predict.main(common + ["--ckpt", str(tmp_path / "tiny.pth"), "--no_pretrained"])
    b = predict.main(common + ["--ckpt", str(tmp_path / "tiny.onnx"), "--backend", "onnxruntime"])
    np.testing.assert_allclose(b, a, rtol=1e-5)


@pytest.mark.slow
def test_the_papers_architecture_exports_and_scores_alike(tmp_path, backbone_files, model_factory):
    """ViT-B/8 blocks 0-4 + ResNet-50 layer1, deformable fusion, the full-width head: every operator and weight of
    the paper's model. At crop 64, not the paper's 224: the crop sets only the sizes of the grids (and makes the
    position embedding resampled, as for any crop but 224), and 224 costs 12 times the arithmetic (~30 s here)."""
    model = model_factory(8)
    save_weights(str(tmp_path / "paper.pth"), model)
    result = export_main(["--ckpt", str(tmp_path / "paper.pth"), "--out", str(tmp_path / "paper.onnx"),
                          "--vit_weights", backbone_files[8], "--resnet_weights", backbone_files["resnet"],
                          "--crop_size", "64"])
    assert max(result["max_rel_diff"].values()) <= 1e-5 and result["bytes"] > 200e6  # ONNX Runtime scored it alike
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "paper.onnx")).metadata_props}
    assert json.loads(meta["crop_size"]) == 64 and json.loads(meta["model"]) == model.config.to_dict()
    # a process without this project reads and scores an export: the tiny architectures' test above
