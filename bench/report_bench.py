"""The HTML report stays usable on a ~100-million-parameter model (issue 6).

Builds, in a temporary directory, a BERT-base-shaped safetensors checkpoint (HuggingFace names,
random float32 weights, ~110 M parameters) and, unless ``--no-conv``, a ~100 M-parameter conv net
saved with ``torch.save(state_dict)``. For each, runs ``weightkit report PATH -o out.html`` in a
subprocess (wall time of the whole command) and measures the HTML size, then loads the page in
headless Chromium (selenium, as tests/test_report.py does): load time (median of several fresh
navigations, navigation-timing ``loadEventEnd``), time to sort the layer table by parameters and to
filter it, browser console errors (SEVERE) and any network request other than the file itself.

Baseline, measured in the same process: the report of a small (~1 M-parameter) MLP; the result
prints the big/small ratios of load time and of size. ``--deep N`` adds a model of N small layers
(12.5 M parameters for N = 3000, but 3N table rows) to show how the page grows with the layer count.

    KERAS_BACKEND=torch .venv/bin/python bench/report_bench.py [--loads 5] [--no-conv] [--deep 3000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

# targets from issue 6
MAX_MB = 20.0
MAX_LOAD_S = 3.0


def bert_base(seed: int = 0) -> dict[str, torch.Tensor]:
    """BERT-base (uncased) layout with HuggingFace names: 109.5 M parameters."""
    g = torch.Generator().manual_seed(seed)
    h, inter, vocab, layers = 768, 3072, 30522, 12

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.02

    sd = {
        "bert.embeddings.word_embeddings.weight": w(vocab, h),
        "bert.embeddings.position_embeddings.weight": w(512, h),
        "bert.embeddings.token_type_embeddings.weight": w(2, h),
        "bert.embeddings.LayerNorm.weight": torch.ones(h),
        "bert.embeddings.LayerNorm.bias": torch.zeros(h),
    }
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value",
                     "attention.output.dense"):
            sd[p + name + ".weight"] = w(h, h)
            sd[p + name + ".bias"] = w(h)
        sd[p + "attention.output.LayerNorm.weight"] = torch.ones(h)
        sd[p + "attention.output.LayerNorm.bias"] = torch.zeros(h)
        sd[p + "intermediate.dense.weight"] = w(inter, h)
        sd[p + "intermediate.dense.bias"] = w(inter)
        sd[p + "output.dense.weight"] = w(h, inter)
        sd[p + "output.dense.bias"] = w(h)
        sd[p + "output.LayerNorm.weight"] = torch.ones(h)
        sd[p + "output.LayerNorm.bias"] = torch.zeros(h)
    sd["bert.pooler.dense.weight"] = w(h, h)
    sd["bert.pooler.dense.bias"] = w(h)
    return sd


def conv_net(seed: int = 0) -> dict[str, torch.Tensor]:
    """A VGG-like conv net (3x3 convs with BatchNorm, then a classifier): ~100 M parameters."""
    torch.manual_seed(seed)
    from torch import nn

    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 1024, 1024, 1024, 2048, 2048]
    mods, cin = [], 3
    for c in widths:
        mods += [nn.Conv2d(cin, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        cin = c
    mods += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 4096), nn.ReLU(), nn.Linear(4096, 1000)]
    with torch.no_grad():
        return {k: v.detach().clone() for k, v in nn.Sequential(*mods).state_dict().items()}


def small_mlp(seed: int = 0) -> dict[str, torch.Tensor]:
    """The baseline: an MLP of ~1.05 M parameters (784-1024-256-10)."""
    torch.manual_seed(seed)
    from torch import nn

    m = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 256), nn.ReLU(), nn.Linear(256, 10))
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def deep_mlp(layers: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Many small layers (``--deep N``): N x Linear(64, 64), 2N tensors; stresses the tables, not the bytes."""
    torch.manual_seed(seed)
    from torch import nn

    m = nn.Sequential(*[nn.Linear(64, 64) for _ in range(layers)])
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def build(path: Path, out: Path) -> float:
    env = dict(os.environ, KERAS_BACKEND=os.environ.get("KERAS_BACKEND", "torch"))
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "weightkit", "report", str(path), "-o", str(out)],
                         capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"weightkit report {path} failed:\n{run.stderr}")
    return dt


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def start_browser(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    driver.set_page_load_timeout(120)
    return driver


def visit(driver, html: Path, loads: int) -> dict:
    """Load the page ``loads`` times; then sort and filter the layer table once; collect logs."""
    from selenium.webdriver.common.by import By

    driver.get_log("browser"), driver.get_log("performance")  # drop what earlier pages left
    load_s, wall_s = [], []
    for _ in range(loads):
        driver.get("about:blank")
        t0 = time.perf_counter()
        driver.get(html.as_uri())
        wall_s.append(time.perf_counter() - t0)
        nav = driver.execute_script(
            "var t=performance.getEntriesByType('navigation')[0];return [t.domContentLoadedEventEnd,t.loadEventEnd];")
        load_s.append(nav[1] / 1000)
    sections = [e.get_attribute("id") for e in driver.find_elements(By.TAG_NAME, "section")]
    # sort the layer table by "params" (third column), both ways, and check the order of all rows
    params = lambda: driver.execute_script(
        "return Array.prototype.map.call(document.getElementById('layers-table').tBodies[0].rows,"
        "function(r){return parseFloat(r.cells[2].dataset.v);});")
    header = driver.find_elements(By.CSS_SELECTOR, "#layers-table th.sort")[2]
    t0 = time.perf_counter()
    header.click()
    first = params()
    sort_s = time.perf_counter() - t0
    header.click()
    second = params()
    sort_ok = first == sorted(first) and second == sorted(second, reverse=True) and len(first) > 0
    visible = lambda: driver.execute_script(
        "return Array.prototype.filter.call(document.getElementById('layers-table').tBodies[0].rows,"
        "function(r){return r.style.display!=='none';}).length;")
    rows_shown = visible()
    # filter by the name of the last layer: every row left shows that text
    query = driver.execute_script(
        "var b=document.getElementById('layers-table').tBodies[0];return b.rows[b.rows.length-1].cells[0].textContent;")
    inp = driver.find_element(By.CSS_SELECTOR, 'input.filter[data-table="layers-table"]')
    t0 = time.perf_counter()
    inp.send_keys(query)
    shown = visible()
    filter_s = time.perf_counter() - t0
    names = driver.execute_script(
        "return Array.prototype.filter.call(document.getElementById('layers-table').tBodies[0].rows,"
        "function(r){return r.style.display!=='none';}).map(function(r){return r.textContent.toLowerCase();});")
    filter_ok = shown > 0 and all(query.lower() in n for n in names)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    msgs = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in msgs if m["method"] == "Network.requestWillBeSent"]
    external = [u for u in urls if not u.startswith(("file://", "data:", "chrome://", "chrome-", "about:"))]
    return dict(load_s=statistics.median(load_s), wall_s=statistics.median(wall_s), sections=sections,
                rows=len(first), rows_shown=rows_shown, sort_ok=sort_ok, sort_s=sort_s,
                filter_ok=filter_ok, filter_s=filter_s, filtered=shown, errors=errors, external=external)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loads", type=int, default=5, help="page loads per report (median)")
    ap.add_argument("--no-conv", action="store_true", help="skip the ~100 M-parameter conv net")
    ap.add_argument("--deep", type=int, default=0, metavar="N",
                    help="also a model of N Linear(64, 64) layers (many table rows; e.g. 3000)")
    ap.add_argument("--keep", type=Path, help="copy the HTML reports here")
    args = ap.parse_args()
    if chromium() is None or shutil.which("chromedriver") is None:
        raise SystemExit("needs headless Chromium and chromedriver (Debian: chromium chromium-driver)")
    import weightkit

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = [("mlp 1M (baseline)", "mlp.safetensors", small_mlp), ("bert-base", "bert.safetensors", bert_base)]
        if not args.no_conv:
            models.append(("conv net", "conv.pt", conv_net))
        if args.deep:
            models.append((f"{args.deep} x Linear(64,64)", "deep.safetensors", lambda: deep_mlp(args.deep)))
        rows = []
        driver = start_browser(tmp / "profile")
        try:
            for label, fname, make in models:
                sd = make()
                n = sum(v.numel() for v in sd.values())
                path = tmp / fname
                (torch.save(sd, path) if fname.endswith(".pt") else save_file(sd, str(path)))
                del sd
                out = tmp / (path.stem + ".html")
                build_s = build(path, out)
                mb = out.stat().st_size / 1e6
                res = visit(driver, out, args.loads)
                rows.append(dict(label=label, params=n, build_s=build_s, mb=mb, **res))
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(out, args.keep / out.name)
        finally:
            driver.quit()
    print(f"weightkit {weightkit.__version__}, torch {torch.__version__}, {os.cpu_count()} cores; "
          f"page load: median of {args.loads} navigations (loadEventEnd), headless Chromium")
    print()
    print("| model | params | build s | HTML MB | load s | sort s | filter s | layer rows | "
          "SEVERE console | external requests | sort/filter ok |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['label']} | {r['params'] / 1e6:.1f} M | {r['build_s']:.1f} | {r['mb']:.2f} | {r['load_s']:.3f} | "
              f"{r['sort_s']:.3f} | {r['filter_s']:.3f} | {r['rows']} | {len(r['errors'])} | "
              f"{len(r['external'])} | {r['sort_ok'] and r['filter_ok']} |")
    print()
    base = rows[0]
    for r in rows[1:]:
        print(f"{r['label']} / baseline: load time {r['load_s'] / base['load_s']:.2f}x, "
              f"size {r['mb'] / base['mb']:.2f}x, build time {r['build_s'] / base['build_s']:.2f}x; "
              f"sections {', '.join(r['sections'])}")
    for r in rows:
        for e in r["errors"]:
            print(f"  console SEVERE on {r['label']}: {e['message'][:200]}")
        for u in r["external"]:
            print(f"  external request from {r['label']}: {u[:200]}")
    met = all(r["mb"] < MAX_MB and r["load_s"] < MAX_LOAD_S and not r["errors"] and not r["external"]
              and r["sort_ok"] and r["filter_ok"] for r in rows)
    print(f"\ntargets (< {MAX_MB:.0f} MB, load < {MAX_LOAD_S:.0f} s, no console errors, no requests, "
          f"sort and filter work): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
