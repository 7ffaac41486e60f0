"""The HTML report: structure (golden checks on the markup), self-containment, size, and a real
headless Chromium that loads it, sorts the layer table and takes a screenshot."""

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from torch import nn

import weightkit

pytest.importorskip("matplotlib")
ARTEFACTS = Path(os.environ.get("WEIGHTKIT_TEST_ARTEFACTS", Path(__file__).parent / "artefacts"))


class Page(HTMLParser):
    """Collects what the checks need: section ids, table headers, resources the page would load."""

    def __init__(self):
        super().__init__()
        self.sections, self.headers, self.urls, self.images, self.scripts = [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "script":
            self.scripts.append(a)
        for key in ("src", "href"):
            if key in a and not a[key].startswith(("#", "data:")):
                self.urls.append(a[key])


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(),
                         nn.Linear(8 * 4 * 4, 10))


def mlp():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 1))


def parse(path) -> Page:
    p = Page()
    p.feed(Path(path).read_text())
    return p


def test_sections_and_self_containment(tmp_path):
    model = cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[5].weight.mul_(1.5)
    ckpt, ref = tmp_path / "cnn.pt", tmp_path / "before.pt"
    torch.save(model.state_dict(), ckpt)
    torch.save(before, ref)
    info = weightkit.report(ckpt, tmp_path / "r.html", compare=ref)
    page = parse(info.path)
    assert page.sections == ["overview", "layers", "doctor", "statistics", "filters", "heatmaps", "compare"]
    assert page.urls == [] and all(s == {} for s in page.scripts)  # no external scripts, fonts or images
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    html = Path(info.path).read_text()
    assert not re.search(r"https?://", html)
    # the layer table lists every layer with its kind
    for layer, kind in (("0", "Conv2d"), ("1", "BatchNorm"), ("3", "Conv2d"), ("5", "Linear")):
        assert re.search(rf'<td data-v="{layer}">{layer}</td><td data-v="{kind}">', html), layer


def test_mlp_gets_importance_and_doctor_findings(tmp_path):
    model = mlp()
    with torch.no_grad():
        model[2].weight[3] = float("nan")
    info = weightkit.report(model, tmp_path / "m.html")
    assert "importance" in info.sections and "filters" not in info.sections
    html = Path(info.path).read_text()
    assert 'class="error">error</td><td>nan-inf' in html


def test_big_model_stays_small_and_paginated(tmp_path):
    # 300 layers of 64x64: pages of the layer table, pictures limited, file well under 20 MB
    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(300)])
    info = weightkit.report(model, tmp_path / "big.html")
    html = Path(info.path).read_text()
    assert 'data-pagesize="200"' in html and html.count("<figure>") <= 8
    # the heatmaps show the network from its first to its last layer, not only its first four
    assert re.findall(r"<figcaption>(\d+)\.weight</figcaption>", html) == ["0", "100", "199", "299"]
    assert "notes" in info.sections
    # 900 table rows (300 layers, 600 tensors), each with a histogram: about 1 KB a row, so that a
    # model with thousands of tensors stays far under 20 MB (each sparkline used to be ~3 KB of <rect>s)
    rows = html.count("<tr>")
    assert rows >= 900 and info.bytes < 1.5e3 * rows + 0.5e6, (rows, info.bytes)


def test_histogram_sparkline_draws_each_bin_at_its_height():
    from weightkit.render.html import _svg_hist

    svg = _svg_hist([0, 5, 10, 10, 3, 0, 1], height=22)
    assert svg.count("<path") == 1 and 'viewBox="0 0 7 22"' in svg
    d = re.search(r' d="([^"]+)"', svg).group(1)
    x, y, tops = 0.0, 22.0, {}
    for op, val in re.findall(r"([MVHZ])\s*([-\d. ]*)", d):
        if op == "M":
            x, y = map(float, val.split())
        elif op == "V":
            y = float(val)
        elif op == "H":
            for i in range(int(x), int(float(val))):
                tops[i] = y
            x = float(val)
    assert [round(22 - tops[i], 1) for i in range(7)] == [0, 11, 22, 22, 6.6, 0, 2.2]


def test_cli(tmp_path):
    ckpt = tmp_path / "m.pt"
    torch.save(mlp().state_dict(), ckpt)
    out = tmp_path / "report.html"
    ok = subprocess.run([sys.executable, "-m", "weightkit", "report", str(ckpt), "-o", str(out)],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and out.exists() and "wrote" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "weightkit", "report", str(ckpt), "-o", str(tmp_path / "no" / "r.html")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_chromium() is None or shutil.which("chromedriver") is None,
                    reason="headless Chromium not installed (make test installs Debian's chromium and "
                           "chromium-driver when it can; install them to run this test)")
def test_report_in_headless_chromium(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    model = cnn()
    info = weightkit.report(model, tmp_path / "report.html")
    opts = webdriver.ChromeOptions()
    opts.binary_location = _chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(Path(info.path).as_uri())
        assert driver.title.startswith("weightkit report")
        ids = [e.get_attribute("id") for e in driver.find_elements(By.TAG_NAME, "section")]
        assert {"overview", "layers", "doctor", "statistics", "filters"} <= set(ids)
        table = driver.find_element(By.ID, "layers-table")
        params = lambda: [float(r.find_elements(By.TAG_NAME, "td")[2].get_attribute("data-v"))
                          for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
        header = table.find_elements(By.CSS_SELECTOR, "th.sort")[2]
        header.click()
        assert params() == sorted(params())
        header.click()
        assert params() == sorted(params(), reverse=True)
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(ARTEFACTS / "report.png"))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        import json

        requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
        urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
        # Chromium's own chrome:// pages aside, the page loads nothing but itself
        assert [u for u in urls if not u.startswith(("file://", "data:", "chrome://", "chrome-"))] == []
        assert any(u.startswith("file://") for u in urls)
    finally:
        driver.quit()


def test_report_with_a_watch_run_shows_gradient_flow_and_alerts(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=1e6)  # absurd: the run records a NaN alert
    with weightkit.watch(model, optimizer=opt, every=1, name="r", run_dir=tmp_path / "runs"):
        for _ in range(8):
            opt.zero_grad()
            model(torch.randn(16, 6)).pow(2).mean().backward()
            opt.step()
    info = weightkit.report(model, tmp_path / "r.html", run=tmp_path / "runs" / "r")
    assert "run" in info.sections
    html = Path(info.path).read_text()
    assert 'alt="gradient flow"' in html and "nonfinite" in html
    out = tmp_path / "gf.png"
    run = subprocess.run([sys.executable, "-m", "weightkit", "plot", "gradflow", str(tmp_path / "runs" / "r"),
                          "-o", str(out)], capture_output=True, text=True)
    assert run.returncode == 0 and out.read_bytes()[:4] == b"\x89PNG"
