"""The speed benchmark keeps running (CPU smoke: tiny sizes; the real numbers come from a GPU)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_atari_quick(tmp_path):
    out = tmp_path / "speed.json"
    proc = subprocess.run([sys.executable, "benchmark/bench_atari.py", "--agent", "rainbow", "--quick", "--no-training",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["agent"] == "rainbow" and {r["config"] for r in result["runs"]} == {"baseline", "softmoe8"}
    assert all(r["update_ms_median"] > 0 and r["params"] > 0 for r in result["runs"])
