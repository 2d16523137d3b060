"""The severity ladder: styles blended from `source` to `target`, and its named levels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stvm_sdk.synthetic import dataset as synthetic
from stvm_sdk.synthetic.render.styles import MILD, MODERATE, SEVERITY, SOURCE, STYLES, TARGET, blend_styles

SIZE = (64, 128)


def _flat_numbers(style) -> list[float]:
    """Every numeric setting of a style, in a fixed order (look colours included)."""
    out: list[float] = []

    def walk(v) -> None:
        if dataclasses.is_dataclass(v):
            for f in dataclasses.fields(v):
                walk(getattr(v, f.name))
        elif isinstance(v, dict):
            for k in sorted(v):
                walk(v[k])
        elif isinstance(v, tuple):
            for x in v:
                walk(x)
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out.append(float(v))

    walk(style)
    return out


def test_the_ends_of_the_blend_are_the_two_domains_exactly() -> None:
    assert blend_styles(SOURCE, TARGET, 0.0, "source", "synthsource") == SOURCE
    assert blend_styles(SOURCE, TARGET, 1.0, "target", "synthtarget") == TARGET
    with pytest.raises(ValueError, match="severity"):
        blend_styles(SOURCE, TARGET, 1.5, "x", "synthx")


def test_numeric_settings_move_monotonically_and_categorical_ones_switch_half_way() -> None:
    ts = (0.1, 0.25, 0.45, 0.7, 0.9)
    styles = [blend_styles(SOURCE, TARGET, t, f"s{t}", "synths") for t in ts]
    assert [s.shapes.car for s in styles] == ["box", "box", "box", "rounded", "rounded"]
    assert [s.layout.ego_hood for s in styles] == [False, False, False, True, True]
    # palette lengths switch with the categorical settings, so compare numbers of the t < 0.5 styles
    low = [_flat_numbers(s) for s in styles[:3]]
    src, tgt = SOURCE.sensor, TARGET.sensor
    for s, t in zip(styles, ts, strict=True):
        assert s.sensor.shadows == pytest.approx((1 - t) * src.shadows + t * tgt.shadows)
        assert min(src.blur[1], tgt.blur[1]) <= s.sensor.blur[1] <= max(src.blur[1], tgt.blur[1])
        lo, hi = s.sensor.jpeg
        assert (lo, hi) == (0, 0) or 35 <= lo <= hi <= 100  # compression only grows toward target's
    assert len(low[0]) == len(low[1]) == len(low[2])
    for a, b, c in zip(*low, strict=True):
        assert min(a, c) - 1 <= b <= max(a, c) + 1  # between its neighbours (ints round)


def test_named_levels_are_registered_domains_that_render(tmp_path) -> None:
    assert STYLES["mild"] is MILD and STYLES["moderate"] is MODERATE
    assert 0 < SEVERITY["mild"] < SEVERITY["moderate"] < 1
    assert {"mild", "moderate"} <= set(synthetic.DOMAINS)
    for domain in ("mild", "moderate"):
        image, label = synthetic.render_scene(domain, synthetic.frame_rng(0, domain, "val", 0), SIZE)
        assert image.shape == (*SIZE, 3) and label.shape == SIZE
        assert len(np.unique(label[label != 255])) >= 4
    root = synthetic.generate(tmp_path / "d", "mild", 2, size=SIZE, split="test")
    assert len(list((root / "leftImg8bit" / "test" / "synthmild").glob("*.png"))) == 2


def test_a_blended_style_renders_through_the_same_generator() -> None:
    """render_frame takes a Style of one's own; the source end renders the source domain's frame."""
    rng = synthetic.frame_rng(0, "source", "val", 3)
    own = synthetic.render_scene(blend_styles(SOURCE, TARGET, 0.0, "source", "synthsource"), rng, SIZE)
    named = synthetic.render_scene("source", synthetic.frame_rng(0, "source", "val", 3), SIZE)
    np.testing.assert_array_equal(own[0], named[0])
    np.testing.assert_array_equal(own[1], named[1])


def test_severity_orders_how_far_frames_are_from_source() -> None:
    """Mean saturation falls from source through mild and moderate to target (the palette blends)."""

    def saturation(domain: str) -> float:
        imgs = [
            synthetic.render_scene(domain, synthetic.frame_rng(1, domain, "val", i), SIZE)[0]
            for i in range(4)
        ]
        return float(np.mean([(im.max(2).astype(int) - im.min(2)).mean() for im in imgs]))

    s = [saturation(d) for d in ("source", "mild", "moderate", "target")]
    assert s[0] > s[1] > s[2] > s[3], s
