"""`make demo` works end to end: two trained networks, their summaries, and a report."""

import os
import subprocess
import sys


def test_demo_trains_saves_summarises_and_reports(tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.html"
    env = {**os.environ, "COLUMNS": "160"}
    run = subprocess.run([sys.executable, "-m", "weightkit.demo", str(out), str(report)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (out / "cnn.pt").exists() and (out / "sentiment_rnn.pt").exists()
    assert (out / "runs" / "cnn" / "watch.sqlite").exists()
    # the summaries explain the layers they show
    assert "out_channels, in_channels/groups, kernel_h, kernel_w" in run.stdout
    assert "4*hidden (i,f,g,o)" in run.stdout and "optimizer state" in run.stdout
    html = report.read_text()
    assert 'id="filters"' in html and 'alt="gradient flow"' in html
