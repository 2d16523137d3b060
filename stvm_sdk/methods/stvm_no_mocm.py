"""``stvm_no_mocm``: STvM without MOCM, to show what the mixing adds (the ladder's fourth rung)."""

from __future__ import annotations

from stvm_sdk.methods.mean_teacher import MeanTeacher
from stvm_sdk.methods.registry import register_method
from stvm_sdk.methods.stvm import Stvm


@register_method
class StvmNoMocm(Stvm):
    """Metric-reliability weights on all pseudo-labels; the student's input is not mixed."""

    name = "stvm_no_mocm"
    summary = "STvM without MOCM: metric-reliability weights only"
    order = 60
    mix = MeanTeacher.mix
