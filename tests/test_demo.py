"""The README's demo command works and meets its promise (>= 95% validation accuracy)."""
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_and_reaches_95_percent(tmp_path):
    out = subprocess.run([sys.executable, "-m", "snapfit.demo", "--out", str(tmp_path / "demo"), "--no-progress"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    header = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ["epoch", "trn_loss", "val_loss"])
    assert [ln.split()[0] for ln in lines[header + 1: header + 8]] == [str(i) for i in range(7)]
    acc = float(re.search(r"validation accuracy: ([0-9.]+)", out.stdout).group(1))
    assert acc >= 0.95
    assert (tmp_path / "demo" / "lr.png").stat().st_size > 1000
    assert (tmp_path / "demo" / "loss.png").stat().st_size > 1000
    assert sorted(p.name for p in (tmp_path / "demo" / "models").iterdir()) == [
        "snap_cyc_0.json", "snap_cyc_0.pt", "snap_cyc_1.json", "snap_cyc_1.pt", "snap_cyc_2.json", "snap_cyc_2.pt"]
