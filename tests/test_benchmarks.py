"""Smoke tests of benchmarks/throughput.py, accelerator.py and compile_time.py on tiny models (seconds, not
measurements)."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED, load_benchmark, shared_or_skip


@pytest.mark.slow
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


@pytest.mark.slow
def test_throughput_parts_resume(tiny_folder, tmp_path):
    """--parts: each part is saved as it ends; a rerun after an interruption measures only the
    missing parts, and the totals are the parts' sums."""
    scifact = shared_or_skip(SHARED / "data" / "scifact")
    out = tmp_path / "parts.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--model", str(tiny_folder),
           "--dataset", str(scifact), "--limit", "9", "--max-length", "96", "--batch-sizes", "2,4",
           "--sweep-docs", "4", "--peak-shapes", "128x128x128", "--peak-reps", "1", "--no-torch-peak",
           "--parts", "2", "--output", str(out)]

    def run(args=cmd):
        proc = subprocess.run(args, check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    run()
    full = json.loads(out.read_text())
    assert full["complete"] and [p["keytok"]["docs"] for p in full["parts"]] == [5, 4]
    first, second = full["parts"]
    assert second["baseline"]["sweep"] == [] and second["baseline"]["batch_size"] == first["baseline"]["batch_size"]
    for side in ("keytok", "baseline"):
        s = full[side]
        assert s["docs"] == 9 and s["real_tokens"] == first[side]["real_tokens"] + second[side]["real_tokens"]
        assert s["tokens_per_s"] == s["real_tokens"] / (first[side]["seconds"] + second[side]["seconds"])
        mfu = s["useful_flops"] / sum(p[side]["seconds"] * p["peak_flops"] for p in full["parts"])
        assert abs(s["mfu"] - mfu) < 1e-12
    assert full["flops"]["total"] == first["flops"]["total"] + second["flops"]["total"]

    # Interrupted after part 1: the rerun keeps part 1 as it was and measures part 2 only.
    partial = dict(full, parts=[first], complete=False)
    out.write_text(json.dumps(partial))
    proc = run()
    assert "1 of 2 parts done" in proc.stderr
    again = json.loads(out.read_text())
    assert again["complete"] and again["parts"][0] == first and len(again["parts"]) == 2
    assert "| part |" in proc.stdout and "| keytok |" in proc.stdout
    assert any(line.startswith("9 docs of ") for line in proc.stdout.splitlines())

    # An unfinished run's table says how much of the corpus its totals cover.
    throughput = load_benchmark("throughput")
    head = throughput.markdown({**full, **throughput.combine_parts([first])}).splitlines()[0]
    assert head.startswith("5 of 9 docs (an unfinished --parts run)"), head

    # A finished run is only reported; other settings are refused, not mixed in.
    proc = run()
    assert "part 1/2" not in proc.stderr and "part 2/2" not in proc.stderr
    bad = subprocess.run(cmd[:cmd.index("--max-length") + 1] + ["64"] + cmd[cmd.index("--max-length") + 2:],
                         check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode != 0 and "other settings" in bad.stderr


@pytest.mark.slow
def test_accelerator_benchmark_smoke(tmp_path):
    """benchmarks/accelerator.py on CPU with the tiny shape: every planned shape precompiled (the
    timed pass compiles nothing), its FLOP count and MFU sane, the table and JSON written."""
    out = tmp_path / "acc.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "accelerator.py"), "--models", "tiny", "--docs", "40",
         "--max-length", "160", "--batch-tokens", "2048", "--vocab-chunk", "1024", "--peak-size", "256",
         "--peak-tflops", "1", "--compare-impls", "--output", str(out)],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r, other = json.loads(out.read_text())
    assert r["dtype"] == "float32" and r["attention_impl"] == "xla"     # CPU defaults
    assert r["docs"] == 40 and r["run_compiles"] == 0 and r["precompiled"] >= 2
    assert 0 < r["mfu_measured_peak"] < 1 and 0 < r["mfu_nominal_peak"] < 1
    assert r["real_tokens"] > 40 * 16 and 0 <= r["padding_fraction"] < 0.5
    # --compare-impls: the other kernel on the same documents, its outputs checked against the first
    ag = other["agreement_with_xla"]
    assert other["attention_impl"] == "fused" and other["real_tokens"] == r["real_tokens"]
    assert ag["docs"] == 40 and ag["cosine_min"] > 0.99999 and ag["topk_overlap_min"] == 1.0
    assert out.with_suffix(".md").read_text().startswith("| model |")


@pytest.mark.slow
def test_compile_time_benchmark_smoke(tmp_path):
    """benchmarks/compile_time.py with the tiny shape: three fresh processes (cache off, cold,
    warm) compile the same shapes, and the warm one finds the cold one's entries."""
    out = tmp_path / "compile.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compile_time.py"), "--model", "tiny", "--docs", "40",
         "--max-length", "160", "--batch-tokens", "2048", "--output", str(out)],
        check=False, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["cache"] for r in rows] == ["off", "cold", "warm"]
    assert len({r["precompiled"] for r in rows}) == 1 and rows[0]["precompiled"] >= 2
    assert "| warm |" in proc.stdout
