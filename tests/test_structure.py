"""The layout the README describes: library layers import only downwards, no import cycles, command-line code only
in the entry points and tools/, and pyiqa reads an exported checkpoint the way its AHIQ does."""
from __future__ import annotations

import ast
from collections import OrderedDict
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file

from models import build_model
from models.ahiq import DeformFusion, PixelPrediction
from tools.export_pyiqa import export
from utils.checkpoint import save_weights

REPO = Path(__file__).resolve().parents[1]


def _layer_table() -> dict[str, int]:
    """The layer of each module (or package) name, from the one table in docs/layout.md."""
    layers = {}
    for line in (REPO / "docs" / "layout.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            layers.update({name.strip().strip("`"): int(cells[0]) for name in cells[1].split(",")})
    return layers


# Lower layers never import higher ones; a module may import its own unit and anything below.
LAYERS = _layer_table()
LIBRARY_TOP = 6  # layers 0-6 are library code: no command line (options/ holds the parsers, nothing runs them)


def _unit(module: str) -> str:
    """The table's entry a module belongs to: its longest dotted prefix in the table (a package whose modules have
    rows of their own, imported as a whole, is its own unit)."""
    parts = module.split(".")
    return next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in LAYERS), module)


def _layer(module: str) -> int:
    """A unit's layer; a package whose modules have rows counts as its highest one."""
    unit = _unit(module)
    return LAYERS[unit] if unit in LAYERS else max(v for k, v in LAYERS.items() if k.startswith(unit + "."))


def _known(name: str) -> bool:
    return any(name == key or name.startswith(key + ".") or key.startswith(name + ".") for key in LAYERS)


def _project_imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in REPO.rglob("*.py"):
        rel = path.relative_to(REPO)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        if rel.parts[0] in (".venv", "tests") or not _known(module):
            continue
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(rel))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            found |= {n for n in names if _known(n)}
        graph[module] = found
    return graph


def test_every_module_has_a_layer_in_the_table():
    found = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
             for p in REPO.rglob("*.py") if p.relative_to(REPO).parts[0] not in (".venv", "tests")}
    assert found and all(_known(m) for m in found), sorted(m for m in found if not _known(m))


def test_imports_go_downwards_only():
    upward = [f"{m} -> {d}" for m, deps in _project_imports().items() for d in deps
              if _unit(m) != _unit(d) and _layer(d) >= _layer(m)]
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
        if _layer(module) > LIBRARY_TOP or _unit(module) == "options":  # options/ is where argparse lives
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


@pytest.mark.slow
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
