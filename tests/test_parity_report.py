"""scripts/parity_report.py on one small module (the hash grid), on this run's devices: the JSON carries the
versions, devices and rows, the Markdown is the same table, a forced failure exits 1, bad options exit 2."""
import json
import os
import subprocess
import sys

import mindspore as ms
import torch

from tests import parity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def report(*args):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "parity_report.py"), "--ms-device", parity.ms_device(),
           "--torch-device", str(parity.torch_device()), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_hashgrid_report_json_and_markdown(tmp_path):
    out_json, out_md = tmp_path / "parity.json", tmp_path / "parity.md"
    proc = report("--only", "hashgrid", "--json", str(out_json), "--md", str(out_md))
    print(proc.stdout, proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out_json.read_text())
    assert doc["versions"]["mindspore"] == ms.__version__ and doc["versions"]["torch"] == torch.__version__
    assert doc["versions"]["cuda"] == torch.version.cuda and "cann" in doc["versions"]
    assert doc["devices"]["mindspore"]["device"] == parity.ms_device() and doc["devices"]["mindspore"]["name"]
    assert doc["devices"]["torch"]["device"] == str(parity.torch_device()) and doc["devices"]["torch"]["name"]
    assert doc["checks"] == ["hashgrid"] and doc["passed"] is True and doc["crashed"] == []
    rows = doc["rows"]
    assert len(rows) == 4
    assert {r["module"] for r in rows} == {"hash grid (8 levels, dense + hashed)"}
    assert any("MindSpore vs torch_ref" in r["check"] for r in rows) and any(r["check"] == "d/d table" for r in rows)
    for r in rows:
        assert set(r) == {"module", "check", "max_abs_error", "relative_error", "tolerance", "passed"}
        assert r["passed"] is True and 0 <= r["relative_error"] <= r["tolerance"]
        assert r["relative_error"] <= r["max_abs_error"]  # divided by max(1, max |ref|)
        assert r["tolerance"] == parity.tolerance(1e-5)  # the hash grid tests' 1e-5, through the device table
    assert any(r["max_abs_error"] > 0 for r in rows)  # so a zero tolerance must fail (next test)
    md = out_md.read_text()
    assert md == proc.stdout
    assert "| module | check | max abs error | relative error | tolerance | pass |" in md
    assert md.count("| hash grid (8 levels, dense + hashed) |") == 4 and "4 rows, all pass" in md
    assert f"MindSpore {ms.__version__} on {parity.ms_device()}" in md and f"torch {torch.__version__}" in md


def test_forced_failure_exits_nonzero(tmp_path):
    out_json = tmp_path / "parity.json"
    proc = report("--only", "hashgrid", "--tolerance-scale", "0", "--json", str(out_json))
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    doc = json.loads(out_json.read_text())
    assert doc["passed"] is False and doc["tolerance_scale"] == 0
    assert any(not r["passed"] for r in doc["rows"])
    assert "**NO**" in proc.stdout and "FAIL" in proc.stdout


def test_bad_options_are_one_line_errors():
    proc = report("--only", "hashgrid,nosuch")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --only: unknown check(s) nosuch; the checks are unet, vae, text_encoder, samplers, hashgrid, "
        "geometry, renderer, background_material, guidance, mvdiffusion_loss, sds_step, converter"]
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "parity_report.py"), "--ms-device", "TPU"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --ms-device TPU: not a MindSpore device")
