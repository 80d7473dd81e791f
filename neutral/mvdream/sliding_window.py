"""Framework-neutral part of the sliding-window many-view evaluation: which views share a window
and how windows are batched (plain Python). Shared by mindspore_impl/ and torch_ref/mvdream/sliding_window.py.
"""
from __future__ import annotations

from typing import Optional


DEFAULT_WINDOW = 3


def window_indices(n: int, num_views: int, window: Optional[int] = DEFAULT_WINDOW) -> tuple[int, ...]:
    """Views attended jointly when evaluating view n (the focus view n is always included).

    window k >= 2: the k - 1 views ending at n plus anchor view 0 ([n-1, n, 0] for k = 3);
    views 0..n while n < k - 1; k = 1: view n alone; None or k >= num_views: all views.
    """
    if not 0 <= n < num_views:
        raise ValueError(f"view {n} out of range for {num_views} views")
    if window is None or window >= num_views:
        return tuple(range(num_views))
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if window == 1:
        return (n,)
    if n < window - 1:
        return tuple(range(n + 1))
    return tuple(range(n - window + 2, n + 1)) + (0,)


def plan_windows(num_views: int, window: Optional[int] = DEFAULT_WINDOW) -> dict[tuple[int, ...], list[int]]:
    """Unique windows -> the focus views whose eps they provide (identical windows run once)."""
    plan: dict[tuple[int, ...], list[int]] = {}
    for n in range(num_views):
        plan.setdefault(window_indices(n, num_views, window), []).append(n)
    return plan


def window_groups(plan, windows_per_call: int):
    """Windows of equal length batched together, at most windows_per_call per UNet call."""
    by_len: dict[int, list] = {}
    for w in plan:
        by_len.setdefault(len(w), []).append(w)
    for length in sorted(by_len):
        ws = by_len[length]
        for i in range(0, len(ws), windows_per_call):
            yield length, ws[i:i + windows_per_call]
