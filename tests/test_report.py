"""test.py --report: one self-contained HTML page, checked as text and in a real browser (headless Chromium)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import test as test_entry
from tests.conftest import make_pipal_set


class Rows(HTMLParser):
    """The rows of the per-image table (``<table id="images">``): cell texts and whether the row is hidden."""

    def __init__(self) -> None:
        super().__init__()
        self.rows, self.inside, self.cell = [], False, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("id") == "images":
            self.inside = True
        elif self.inside and tag == "tr" and self.rows is not None:
            self.rows.append({"hidden": "hidden" in a, "cells": []})
        elif self.inside and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = False
        elif self.inside and tag in ("td", "th") and self.cell is not None:
            self.rows[-1]["cells"].append(self.cell)
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data


def table_rows(page: str) -> tuple[list[str], list[dict]]:
    parser = Rows()
    parser.feed(page)
    return parser.rows[0]["cells"], parser.rows[1:]


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_ckpt) -> dict:
    root = tmp_path_factory.mktemp("report")
    data = make_pipal_set(root / "set", n_refs=5, n_dis=4, size=(40, 40), seed=3)
    result = test_entry.main(["--test_ref_path", data["ref"], "--test_dis_path", data["dis"], "--test_list",
                              data["list"], "--ckpt", tiny_ckpt, "--crop_size", "32", "--n_ensemble", "1",
                              "--no_pretrained", "--gpu_ids", "-1", "--num_workers", "0", "--checkpoints_dir",
                              str(root), "--name", "run", "--bootstrap", "50", "--worst", "2", "--report"])
    return {"root": root, "data": data, "result": result, "page": Path(result["report"]).read_text()}


def test_the_report_holds_the_runs_numbers_and_needs_no_network(report):
    page, result, data = report["page"], report["result"], report["data"]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)  # nothing fetched: images embedded
    assert page.count('src="data:image/png;base64,') == 3  # scatter, groups, worst
    assert "RANDOM BACKBONES" in page and result["checkpoint"] in page
    metrics = json.loads(Path(test_entry.metrics_file(str(report["root"] / "run"), "results.txt")).read_text())
    srcc_row = re.search(r"<tr><td>SRCC</td>(.*?)</tr>", page).group(1)
    values = [float(v) for v in re.findall(r'data-v="([^"]+)"', srcc_row)]
    assert values == pytest.approx([metrics["srcc"], *metrics["intervals"]["srcc"]])
    assert "per group" in page and "per subtype" in page  # PIPAL's groups, from the names
    header, rows = table_rows(page)
    assert header[:2] == ["#", "image"] and header[-3:] == ["fitted MOS", "MOS", "|fitted - MOS|"]
    assert [r["cells"][1] for r in rows] == data["names"]  # list order
    preds = [float(line.split(",")[1]) for line in Path(result["predictions"]).read_text().splitlines()]
    score = header.index("score")
    np.testing.assert_allclose([float(r["cells"][score]) for r in rows], preds, atol=5e-5)
    mos = [float(line.split(",")[1]) for line in Path(data["list"]).read_text().splitlines()]
    np.testing.assert_allclose([float(r["cells"][header.index("MOS")]) for r in rows], mos, atol=5e-5)


CLICKS = """<script>
window.addEventListener("load", () => {
  const th = [...document.querySelectorAll("#images th")].find(h => h.textContent === "score");
  th.click();
  document.body.dataset.ascending = [...document.querySelectorAll("#images tbody tr")]
    .map(r => r.cells[1].textContent).join("|");
  th.click();
  const box = document.getElementById("filter");
  box.value = "A0002";
  box.dispatchEvent(new Event("input"));
});
</script>"""
CATCH = """<script>window.addEventListener("error", e => { document.documentElement.dataset.errors =
  (document.documentElement.dataset.errors || "") + e.message + ";"; });</script>"""


def chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def headless(browser: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True, timeout=120)


def test_the_report_renders_sorts_and_filters_in_a_real_browser(report):
    """Headless Chromium runs the page's script to its end with no error; clicking the score column sorts the rows
    (rising, then falling), typing in the filter hides the rows without the words; a screenshot is saved beside the
    report (look at it: tests/README)."""
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium here (Debian: apt-get install -y chromium; .ci/run installs it when it can)")
    page = report["page"].replace("<head>", "<head>" + CATCH, 1).replace("</body>", CLICKS + "</body>", 1)
    clicked = report["root"] / "clicked.html"
    clicked.write_text(page)
    run = headless(browser, "--virtual-time-budget=5000", "--dump-dom", clicked.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    assert 'data-ready="1"' in dom, "the page's script did not run to its end"
    assert "data-errors" not in dom and "Uncaught" not in run.stderr, run.stderr[-2000:]
    header, rows = table_rows(dom)
    score = header.index("score")
    ascending = re.search(r'data-ascending="([^"]*)"', dom).group(1).split("|")
    by_score = dict(zip((r["cells"][1] for r in rows), (float(r["cells"][score]) for r in rows)))
    assert sorted(ascending) == sorted(report["data"]["names"])
    assert [by_score[n] for n in ascending] == sorted(by_score.values())
    assert [float(r["cells"][score]) for r in rows] == sorted(by_score.values(), reverse=True)  # second click
    assert {r["cells"][1][:5] for r in rows if not r["hidden"]} == {"A0002"}
    assert sum(not r["hidden"] for r in rows) == 4 and "4 of 20 shown" in dom
    page = Path(report["result"]["report"])
    shot = page.with_suffix(".png")
    run = headless(browser, f"--screenshot={shot}", "--window-size=1280,2400", page.as_uri())
    assert run.returncode == 0 and shot.stat().st_size > 20_000, run.stderr[-2000:]
