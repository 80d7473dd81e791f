"""scripts/bench_sds_step.py at a tiny size: both frameworks complete one SDS training step (MindSpore in GRAPH
mode), the JSON records carry the keys the report needs (with each step's time and its deferred sections), and
both report the same loss for the same inputs."""
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("framework", "stage", "s_per_step", "peak_rss_gb", "evaluated_fraction", "completed", "loss",
        "render_s", "vae_s", "unet_s", "optimizer_s", "backward_s", "first_step_s")


def test_tiny_benchmark_records_and_loss_parity(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "bench_sds_step.py"), "--tiny", "--repeat", "1",
           "--timeout", "300", "--max-rss-gb", "8", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=400)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())
    assert [r["framework"] for r in records] == ["mindspore", "torch"]
    for r in records:
        missing = [k for k in KEYS if k not in r]
        assert not missing, f"{r['framework']}: missing keys {missing}"
        assert r["completed"] is True, f"{r['framework']}: {r.get('failure')}\n{r.get('stderr_tail', '')}"
        assert r["stage"] == "tiny"
        for key in ("s_per_step", "peak_rss_gb", "render_s", "vae_s", "unet_s", "optimizer_s"):
            assert math.isfinite(r[key]) and r[key] > 0, f"{r['framework']} {key} = {r[key]}"
        assert r["evaluated_fraction"] is not None and 0.0 < r["evaluated_fraction"] <= 1.0
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        # one row per step (warm-up + repeat), with the deferred step's sections summing to within its time
        assert len(r["steps"]) == 2, r["steps"]
        for row in r["steps"]:
            assert set(row["sections"]) == {"render", "image", "backward", "update"}, row
            assert all(v >= 0 for v in row["sections"].values())
            assert sum(row["sections"].values()) <= row["s"] + 1e-6, row
        assert r["steps"][1]["rerendered"] == 0.0  # the warm-up step picked a bucket that holds the second
    assert records[1]["mindspore_imported"] is False  # the torch child's memory is torch's alone
    ms_loss, pt_loss = records[0]["loss"], records[1]["loss"]
    rel = abs(ms_loss - pt_loss) / abs(pt_loss)
    assert rel <= 1e-3, f"loss MindSpore {ms_loss} vs torch {pt_loss}: rel diff {rel:.2e}"
