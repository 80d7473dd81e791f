"""scripts/project_ascend.py: its counter gives the textbook FLOPs and output bytes of one Linear and one Conv2d on
meta tensors, and the whole projection runs on the tiny models in seconds and prints both stages."""
import json
import math

import torch

from scripts import project_ascend


def test_counter_gives_textbook_numbers_on_meta_tensors():
    linear = torch.nn.Linear(64, 32, device="meta")
    x = torch.empty(8, 64, device="meta")
    with project_ascend.counting() as count:
        linear(x)
    assert count["flops"] == 2 * 8 * 64 * 32  # 2 x batch x in x out
    assert count["tally"].bytes == 8 * 32 * 4  # one fp32 output; the weight transpose is a view
    assert count["tally"].kernels == 1 and count["uncounted"] == []

    conv = torch.nn.Conv2d(3, 16, 3, padding=1, device="meta")
    x = torch.empty(2, 3, 8, 8, device="meta")
    with project_ascend.counting() as count:
        conv(x)
    assert count["flops"] == 2 * (2 * 16 * 8 * 8) * (3 * 3 * 3)  # 2 x outputs x (C_in x k x k)
    assert count["tally"].bytes == 2 * 16 * 8 * 8 * 4
    cost = project_ascend.cost_of(count, weight_bytes=16 * 3 * 3 * 3 * 4)
    assert cost.hbm == 2 * (2 * 16 * 8 * 8 * 4) + 16 * 3 * 3 * 3 * 4  # written + read once, weights once


def test_tiny_projection_prints_both_stages(tmp_path, capsys):
    out = tmp_path / "projection.json"
    assert project_ascend.main(["--config", "configs/tiny-mvdream.yaml", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PROJECTION" in text and "NOT a measurement" in text
    assert "stage 1:" in text and "stage 2:" in text
    for card in project_ascend.HARDWARE:
        assert f"  {card} " in text
    assert "0.857" in text and "0.465" in text
    report = json.loads(out.read_text())
    assert report["projection"] is True and sorted(report["stages"]) == ["1", "2"]
    for stage in report["stages"].values():
        assert {r["card"] for r in stage["rows"]} == set(project_ascend.HARDWARE)
        assert all(math.isfinite(r["step_per_s"]) and r["step_per_s"] > 0 for r in stage["rows"])
        assert stage["mindone"]["measured_step_per_s"] in (0.857, 0.465)
    check, kernels = report["renderer"]["mlp_check"], report["renderer"]["kernels_per_chunk"]
    assert check["analytic_fwd"] == kernels["matmul_flops_fwd"]  # the analytic MLP count is FlopCounterMode's
    assert abs(check["analytic_fwd_bwd"] - kernels["matmul_flops_fwd_bwd"]) <= 1e-3 * kernels["matmul_flops_fwd_bwd"]
