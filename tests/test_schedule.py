"""Scheduled scalars C(value, step): threestudio semantics, pinned values."""
import pytest
from omegaconf import OmegaConf

from neutral.schedule import C, check_schedules


def test_timestep_annealing_values():
    min_pct = [0, 0.98, 0.02, 8000]
    max_pct = [0, 0.98, 0.50, 8000]
    got = [(C(min_pct, s), C(max_pct, s)) for s in (0, 4000, 8000, 9000)]
    print("min/max step percent at 0, 4000, 8000, 9000:", got)
    assert got[0] == (0.98, 0.98)
    assert got[1] == pytest.approx((0.50, 0.74), abs=1e-12)
    assert got[2] == pytest.approx((0.02, 0.50), abs=1e-12)
    assert got[3] == pytest.approx((0.02, 0.50), abs=1e-12)  # clamped after end_step
    # the timestep range really moves (the mindone bug froze it at step 0)
    assert int(C(min_pct, 8000) * 1000) == 20 and int(C(max_pct, 8000) * 1000) == 500


def test_three_entries_start_at_zero_and_start_step_holds():
    assert C([1.0, 0.0, 100], 25) == pytest.approx(0.75)
    lambda_orient = [0, 10, 1000, 5000]
    assert C(lambda_orient, 2500) == pytest.approx(505.0)
    late = [1000, 1.0, 3.0, 2000]
    assert [C(late, s) for s in (0, 1000, 1500, 2000, 5000)] == pytest.approx([1.0, 1.0, 2.0, 3.0, 3.0])


def test_numbers_pass_through_and_listconfig():
    assert C(0.5, 123) == 0.5 and C(0, 10) == 0
    assert C(OmegaConf.create({"w": [0, 0.98, 0.02, 8000]}).w, 4000) == pytest.approx(0.5)


def test_bad_schedules_are_refused():
    with pytest.raises(ValueError, match="3 or 4 entries"):
        C([1.0, 2.0], 0)
    with pytest.raises(ValueError, match="end_step .* must be an integer step"):
        C([0, 1.0, 2.0, 10.0], 0)
    with pytest.raises(TypeError, match="a number or a list"):
        C("0.5", 0)
    with pytest.raises(ValueError, match="3 or 4 entries"):
        check_schedules([0.1, [0, 1, 2, 3, 4]])
