"""The layout the README describes: library layers import only downwards, no import cycles, command-line code only
in the entry points and tools/, and pyiqa reads an exported checkpoint the way its AHIQ does."""
from __future__ import annotations

import ast
from collections import OrderedDict
from pathlib import Path

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file

from models import build_model
from models.ahiq import DeformFusion, PixelPrediction
from tools.export_pyiqa import export
from utils.checkpoint import save_weights

REPO = Path(__file__).resolve().parents[1]
# Lower layers never import higher ones; a module may import its own package and anything below.
LAYERS = {"utils": 0, "models": 1, "data": 2, "engine": 3, "options": 3, "scoring": 4, "runtime": 5, "evaluate": 6,
          "train": 6, "test": 7, "predict": 7, "protocol": 7, "tools": 7, "benchmarks": 7}
LIBRARY = ("utils", "models", "data", "engine", "scoring", "runtime", "evaluate")


def _project_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO)
        if rel.parts[0] in (".venv", "tests") or rel.parts[0] not in LAYERS and rel.stem not in LAYERS:
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(rel))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            found |= {n for n in names if n.split(".")[0] in LAYERS}
        graph[module] = found
    return graph


def test_imports_go_downwards_only():
    upward = [f"{m} -> {d}" for m, deps in _project_imports().items() for d in deps
              if m.split(".")[0] != d.split(".")[0] and LAYERS[d.split(".")[0]] >= LAYERS[m.split(".")[0]]]
    assert not upward, upward


def test_no_import_cycles():
    graph = _project_imports()
    modules = set(graph)

    def resolve(dep: str) -> str | None:  # 'models.config' or the package 'models'
        return dep if dep in modules else None

    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in filter(None, map(resolve, graph[m])):
            assert state.get(d) != 1, " -> ".join(stack + [m, d])
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_library_modules_hold_no_command_line_code():
    for module in _project_imports():
        if module.split(".")[0] not in LIBRARY:
            continue
        path = REPO / (module.replace(".", "/") + ".py")
        if not path.is_file():
            path = REPO / module.replace(".", "/") / "__init__.py"
        text = path.read_text()
        assert "argparse.ArgumentParser(" not in text and '__name__ == "__main__"' not in text, module


class PyiqaAHIQ(nn.Module):
    """The module layout pyiqa's AHIQ loads ``params`` into (attribute and parameter names as there)."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet50 = timm.create_model("resnet50", pretrained=False)
        self.vit = timm.create_model("vit_base_patch8_224", pretrained=False)
        self.deform_net = DeformFusion()
        self.regressor = PixelPrediction()


def test_an_exported_checkpoint_loads_the_way_pyiqa_loads_it(tmp_path, backbone_files):
    torch.manual_seed(3)
    model = build_model(8, pretrained=False, vit_weights=backbone_files[8], resnet_weights=backbone_files["resnet"])
    ckpt = tmp_path / "best.pth"
    save_weights(str(ckpt), model)
    out = tmp_path / "pyiqa.pth"
    export(str(ckpt), str(out), backbone_files[8], backbone_files["resnet"])
    net = PyiqaAHIQ()
    state = torch.load(out, map_location="cpu")["params"]  # as pyiqa's load_pretrained_network does
    state = OrderedDict((k[7:] if k.startswith("module.") else k, v) for k, v in state.items())
    net.load_state_dict(state, strict=True)
    torch.testing.assert_close(net.regressor.conv[0].weight, model.regressor.conv[0].weight, rtol=0, atol=0)
    vit, resnet = load_file(backbone_files[8]), torch.load(backbone_files["resnet"], weights_only=True)
    assert torch.equal(net.vit.blocks[11].mlp.fc2.weight, vit["blocks.11.mlp.fc2.weight"])  # a block AHIQ never runs
    assert torch.equal(net.resnet50.fc.weight, resnet["fc.weight"])
