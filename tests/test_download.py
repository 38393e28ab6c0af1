"""download.sh against files served on 127.0.0.1: placement, sha256 check, idempotence, offline message."""
from __future__ import annotations

import functools
import hashlib
import http.server
import os
import subprocess
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NAMES = {"ckpt.pth": b"checkpoint-bytes" * 100, "vit8.safetensors": b"vit8" * 50,
         "vit16.safetensors": b"vit16" * 50, "resnet.safetensors": b"resnet" * 50}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    for name, data in NAMES.items():
        (served / name).write_bytes(data)
    handler = functools.partial(_Quiet, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _env(base: str, dest: Path, sha: str) -> dict:
    return {**os.environ, "AHIQ_CHECKPOINTS_DIR": str(dest), "AHIQ_CKPT_SHA256": sha,
            "AHIQ_CKPT_URL": f"{base}/ckpt.pth", "AHIQ_VIT8_URL": f"{base}/vit8.safetensors",
            "AHIQ_VIT16_URL": f"{base}/vit16.safetensors", "AHIQ_RESNET_URL": f"{base}/resnet.safetensors"}


def _run(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(REPO / "download.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_download_places_verifies_and_is_idempotent(tmp_path, server):
    base = f"http://127.0.0.1:{server.server_address[1]}"
    dest = tmp_path / "ckpts"
    sha = hashlib.sha256(NAMES["ckpt.pth"]).hexdigest()[:8]
    proc = _run(_env(base, dest, sha), "--patch16")
    assert proc.returncode == 0, proc.stderr
    expected = {"ahiq_pipal/AHIQ_vit_p8_epoch33.pth": "ckpt.pth",
                "backbones/vit_base_patch8_224.augreg_in21k_ft_in1k.safetensors": "vit8.safetensors",
                "backbones/vit_base_patch16_224.augreg_in21k_ft_in1k.safetensors": "vit16.safetensors",
                "backbones/resnet50.a1_in1k.safetensors": "resnet.safetensors"}
    for rel, src in expected.items():
        assert (dest / rel).read_bytes() == NAMES[src]
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == sorted(expected)
    server.shutdown()  # a second run must not need the network
    again = _run(_env(base, dest, sha), "--patch16")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("already present") == 4


def test_a_wrong_checksum_writes_nothing_and_does_not_stop_the_other_files(tmp_path, server):
    base = f"http://127.0.0.1:{server.server_address[1]}"
    dest = tmp_path / "ckpts"
    proc = _run(_env(base, dest, "00000000"))
    assert proc.returncode == 1
    assert "sha256 does not start with 00000000" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "download.sh: failed: checkpoint; every other file is in place"
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == [
        "backbones/resnet50.a1_in1k.safetensors", "backbones/vit_base_patch8_224.augreg_in21k_ft_in1k.safetensors"]


def test_help_prints_help_and_downloads_nothing(tmp_path):
    proc = _run({**os.environ, "AHIQ_CHECKPOINTS_DIR": str(tmp_path / "ckpts")}, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: sh download.sh")
    assert not (tmp_path / "ckpts").exists()
    bad = _run({**os.environ, "AHIQ_CHECKPOINTS_DIR": str(tmp_path / "ckpts")}, "--patch61")
    assert bad.returncode == 2 and "unknown argument --patch61" in bad.stderr and not (tmp_path / "ckpts").exists()

