"""The checks of fields read from files: one line naming the file, the field, what it holds (short) and
what is expected; valid values come back as the caller uses them."""

from __future__ import annotations

import math
import re

import pytest

from stvm_sdk.boundary.fields import MAX_CLASSES, Fields, ModelFields, shown
from stvm_sdk.errors import ModelLoadError


def _refusal(check: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(ModelLoadError) as info:
        check(*args, **kwargs)  # type: ignore[operator]
    line = str(info.value)
    assert "\n" not in line and line.startswith("m.json: field "), line
    return line


F = Fields("m.json", ModelLoadError)
M = ModelFields("m.json", ModelLoadError)


def test_shown_cuts_long_values_and_says_how_long() -> None:
    assert shown("abc") == "'abc'"
    cut = shown("x" * 1_000_000)
    assert len(cut) < 100 and cut.endswith("(1000002 characters)")


def test_the_file_name_is_cut_too() -> None:
    with pytest.raises(ModelLoadError) as info:
        Fields("d/" + "x" * 5000, ModelLoadError).integer("k", None)
    assert len(str(info.value)) < 400


@pytest.mark.parametrize("value", [-1, 0, "abc", 1e12, 2.5, True, math.nan, MAX_CLASSES + 1])
def test_integer_refuses(value: object) -> None:
    line = _refusal(F.integer, "num_classes", value, lo=1, hi=MAX_CLASSES)
    assert f"field 'num_classes' holds {shown(value)}; expected an integer in [1, {MAX_CLASSES}]" in line


def test_integer_takes_an_integral_float() -> None:
    assert F.integer("num_classes", 19.0, lo=1) == 19


def test_missing_field_says_so() -> None:
    assert "field 'arch' is missing; expected a name" in _refusal(F.text, "arch", None)


@pytest.mark.parametrize(
    "std", [[0, 0, 0], [math.nan, 0.2, 0.2], [-0.2, 0.2, 0.2], [0.2, 0.2], "abc", [0.2, "x", 0.2], [1e-9] * 3]
)
def test_normalisation_refuses_a_bad_std(std: object) -> None:
    line = _refusal(M.normalisation, "mean", [0.5] * 3, "std", std)
    assert f"field 'std' holds {shown(std)}; expected a list of 3 finite numbers > 0" in line


def test_normalisation_refuses_a_mean_outside_the_pixel_range() -> None:
    assert "field 'mean' holds [123.7, 116.3, 103.5]" in _refusal(
        M.normalisation, "mean", [123.7, 116.3, 103.5], "std", [0.2] * 3
    )


def test_normalisation_returns_tuples_of_floats() -> None:
    assert M.normalisation("mean", [0, 0.5, 1], "std", [1, 0.25, 0.5]) == ((0.0, 0.5, 1.0), (1.0, 0.25, 0.5))


def test_texts_of_the_wrong_length_say_how_many() -> None:
    line = _refusal(F.texts, "class_names", ["a", "b"], length=5)
    assert "field 'class_names' holds '2 names'; expected a list of 5 names" in line


def test_only_refuses_the_first_key_not_allowed_by_name_and_short() -> None:
    keys = {"encoder_name": 1, "checkpoint_path" + "x" * 9000: 2}
    line = _refusal(M.only, keys, ["encoder_name"], "allowed")
    assert line.startswith("m.json: field 'checkpoint_pathxxx") and len(line) < 200
    assert line.endswith("is not allowed; expected one of encoder_name")
    M.only({"encoder_name": 1}, ["encoder_name"], "allowed")  # nothing to refuse


def test_matching_refuses_what_the_pattern_does_not_match() -> None:
    name = re.compile(r"[a-z0-9_-]+")
    assert M.matching("encoder_name", "resnet18", name, "a name") == "resnet18"
    for bad in ("tu-local-dir:/etc", "hf-hub:x/y", 7, "a" * 500):
        assert "field 'encoder_name' holds" in _refusal(M.matching, "encoder_name", bad, name, "a name")


def test_boolean_takes_only_true_or_false() -> None:
    assert M.boolean("aux_loss", False) is False
    for bad in (0, "yes", 1.0):
        assert "expected true or false" in _refusal(M.boolean, "aux_loss", bad)
