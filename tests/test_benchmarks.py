"""Smoke test of benchmarks/throughput.py on the tiny Llama folder (seconds, not a measurement)."""
import json
import subprocess
import sys
from pathlib import Path

from conftest import SHARED, shared_or_skip

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_smoke(tiny_folder, tmp_path):
    scifact = shared_or_skip(SHARED / "data" / "scifact")
    out = tmp_path / "throughput.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--model", str(tiny_folder),
         "--dataset", str(scifact), "--limit", "8", "--max-length", "128", "--batch-sizes", "2,4",
         "--sweep-docs", "4", "--peak-shapes", "256x256x256", "--peak-reps", "1", "--output", str(out)],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for side in ("keytok", "baseline"):
        s = r[side]
        assert s["docs"] == 8 and s["tokens_per_s"] > 0 and 0 < s["mfu"] < 1
        assert s["real_tokens"] == r["keytok"]["real_tokens"]          # the same token ids
        assert s["padded_tokens"] >= s["real_tokens"] and s["rss_peak_mb"] > 0
    assert r["keytok"]["timed_pass_compiles"] == 0 and r["keytok"]["compile_seconds"] > 0
    assert r["speedup"] == r["keytok"]["tokens_per_s"] / r["baseline"]["tokens_per_s"]
    assert r["peak_flops"] > 0 and r["peak"]["torch"]["best"] > 0
    assert [x["batch_size"] for x in r["baseline"]["sweep"]] == [2, 4]
    assert r["agreement"]["cosine_min"] > 0.999 and r["agreement"]["topk_overlap_mean"] > 0.9
    table = proc.stdout.strip().splitlines()
    assert any(line.startswith("| keytok |") for line in table)
    assert any(line.startswith("| baseline |") for line in table)
