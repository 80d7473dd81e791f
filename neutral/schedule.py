"""Scheduled scalars, threestudio's `C(value)`: a number, or a ramp linear in the global step.

    0.5                      -> 0.5 at every step
    [start_value, end_value, end_step]              (start_step 0)
    [start_step, start_value, end_value, end_step]  -> start_value until start_step, end_value from
                                                       end_step on, linear in between

end_step must be an integer: threestudio reads a float end_step as an epoch count, which this
port does not have (its data never ends an epoch), so a float is refused rather than misread.
"""
from __future__ import annotations

import math
from numbers import Number
from typing import Any, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from neutral.config import ConfigError


class ScheduleError(ConfigError):
    """A malformed scheduled value (wrong length, float steps, NaN/inf)."""


class ScheduleTypeError(ScheduleError, TypeError):
    """A scheduled value that is neither a number nor a list."""


def _as_list(value: Any) -> list:
    if isinstance(value, (ListConfig, DictConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if not isinstance(value, (list, tuple)):
        raise ScheduleTypeError(f"a scheduled value is a number or a list, got {type(value).__name__}: {value!r}")
    return list(value)


def parse_schedule(value: Any) -> tuple[int, float, float, int] | None:
    """(start_step, start_value, end_value, end_step) of a ramp, or None for a plain number."""
    if isinstance(value, Number) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ScheduleError(f"a scheduled value must be finite, got {value}")
        return None
    spec = _as_list(value)
    if len(spec) == 3:
        spec = [0] + spec
    if len(spec) != 4:
        raise ScheduleError(f"a scheduled value has 3 or 4 entries "
                         f"([start_step,] start_value, end_value, end_step), got {spec!r}")
    start_step, start_value, end_value, end_step = spec
    for name, step in (("start_step", start_step), ("end_step", end_step)):
        if isinstance(step, bool) or not isinstance(step, int):
            raise ScheduleError(f"{name} of scheduled value {spec!r} must be an integer step "
                             f"(epoch-based float steps are not supported), got {step!r}")
    try:
        start_value, end_value = float(start_value), float(end_value)
    except (TypeError, ValueError):
        raise ScheduleError(f"the values of scheduled value {spec!r} must be numbers") from None
    if not (math.isfinite(start_value) and math.isfinite(end_value)):
        raise ScheduleError(f"scheduled value {spec!r} holds a non-finite number")
    return start_step, start_value, end_value, end_step


def C(value: Any, global_step: int) -> float:
    """The value of a scheduled scalar at `global_step` (plain numbers pass through unchanged)."""
    ramp = parse_schedule(value)
    if ramp is None:
        return value
    start_step, start_value, end_value, end_step = ramp
    if end_step <= start_step:  # a step function: end_value from end_step on
        return end_value if global_step >= end_step else start_value
    frac = min(1.0, max(0.0, (global_step - start_step) / (end_step - start_step)))
    return start_value + (end_value - start_value) * frac


def check_schedules(values: Sequence[Any]) -> None:
    """Parse each value once so a malformed schedule fails at configure time, not at step 5000."""
    for v in values:
        parse_schedule(v)
