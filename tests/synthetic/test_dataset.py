"""The synthetic benchmark generator: determinism, label validity, Cityscapes layout, domains, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stvm_sdk.errors import ConfigError
from stvm_sdk.synthetic import dataset as synthetic
from stvm_sdk.synthetic.render.labels import LABEL_TO_TRAIN, TRAIN_TO_LABEL

SIZE = (64, 128)  # small frames keep the module well under its time budget
ENV_MD_TABLE = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}  # labelId -> trainId: the official Cityscapes table, written out here, not read from the SDK


def render(domain: str, index: int = 0, seed: int = 0, size: tuple[int, int] = SIZE):
    return synthetic.render_scene(domain, synthetic.frame_rng(seed, domain, "train", index), size)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three target frames written to disk (inline: small n needs no worker processes)."""
    return synthetic.generate(tmp_path_factory.mktemp("synth"), "target", 3, seed=5, size=SIZE, split="val")


@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_same_seed_renders_identical_frames(domain: str) -> None:
    a_img, a_lab = render(domain, seed=3)
    b_img, b_lab = render(domain, seed=3)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)


def test_seed_and_index_change_the_frame() -> None:
    base = render("target", index=0, seed=0)[1]
    assert not np.array_equal(base, render("target", index=1, seed=0)[1])
    assert not np.array_equal(base, render("target", index=0, seed=1)[1])


def test_splits_never_share_frames() -> None:
    rng_train = synthetic.frame_rng(0, "target", "train", 0)
    rng_val = synthetic.frame_rng(0, "target", "val", 0)
    assert not np.array_equal(
        synthetic.render_scene("target", rng_train, SIZE)[1],
        synthetic.render_scene("target", rng_val, SIZE)[1],
    )


@pytest.mark.parametrize("domain", synthetic.DOMAINS)
def test_outputs_have_the_documented_shapes_dtypes_and_label_values(domain: str) -> None:
    img, lab = render(domain, index=2)
    assert img.shape == (*SIZE, 3) and img.dtype == np.uint8
    assert lab.shape == SIZE and lab.dtype == np.uint8
    assert set(np.unique(lab).tolist()) <= set(range(19)) | {255}


def test_scenes_contain_the_street_classes() -> None:
    seen = set()
    for i in range(4):
        seen |= set(np.unique(render("source", index=i)[1]).tolist())
    # road, sidewalk, building, pole, sky and car are in practically every street scene
    assert {0, 1, 2, 5, 10, 13} <= seen


def test_label_tables_match_env_md() -> None:
    for label_id in range(256):
        assert LABEL_TO_TRAIN[label_id] == ENV_MD_TABLE.get(label_id, 255)
    assert [ENV_MD_TABLE[lid] for lid in TRAIN_TO_LABEL] == list(range(19))


def test_files_follow_cityscapes_layout_and_naming(written: Path) -> None:
    images = sorted((written / "leftImg8bit" / "val" / "synthtarget").iterdir())
    assert [p.name for p in images] == [f"synthtarget_000000_00000{i}_leftImg8bit.png" for i in range(3)]
    for p in images:
        stem = p.name.removesuffix("_leftImg8bit.png")
        gt = written / "gtFine" / "val" / "synthtarget"
        assert (gt / f"{stem}_gtFine_labelIds.png").is_file()
        assert (gt / f"{stem}_gtFine_labelTrainIds.png").is_file()
        assert Image.open(p).mode == "RGB" and Image.open(p).size == (SIZE[1], SIZE[0])
    meta = json.loads((written / "synth_target_val.json").read_text())
    assert meta["n"] == 3 and meta["seed"] == 5


def test_written_label_ids_map_to_written_train_ids(written: Path) -> None:
    for p in sorted((written / "gtFine" / "val" / "synthtarget").glob("*_gtFine_labelIds.png")):
        label_ids = np.asarray(Image.open(p))
        train_ids = np.asarray(Image.open(str(p).replace("_labelIds", "_labelTrainIds")))
        expected = np.vectorize(lambda v: ENV_MD_TABLE.get(int(v), 255))(label_ids)
        np.testing.assert_array_equal(train_ids, expected)


def test_written_frames_equal_in_memory_frames(written: Path) -> None:
    img, lab = synthetic.render_scene("target", synthetic.frame_rng(5, "target", "val", 1), SIZE)
    stem = written / "leftImg8bit" / "val" / "synthtarget" / "synthtarget_000000_000001_leftImg8bit.png"
    np.testing.assert_array_equal(np.asarray(Image.open(stem)), img)


def test_target_domains_look_different_from_source() -> None:
    """Source is flat-shaded and saturated; target is textured and noisy (few flat patches), greyer."""

    def stats(domain: str) -> tuple[float, float, float]:
        imgs = [render(domain, index=i, size=(128, 256))[0].astype(np.float32) for i in range(3)]
        sat = np.mean([(im.max(2) - im.min(2)).mean() for im in imgs])
        flat = np.mean([(np.abs(np.diff(im, axis=1)).sum(2) <= 1).mean() for im in imgs])
        return sat, flat, np.mean([im.mean() for im in imgs])

    src, tgt, night = stats("source"), stats("target"), stats("night")
    assert tgt[0] < 0.7 * src[0]  # less saturated
    assert tgt[1] < 0.5 * src[1]  # far fewer perfectly flat neighbourhoods
    assert night[2] < 0.6 * tgt[2]  # darker


def relative_contrast(img: np.ndarray) -> float:
    return float(img.std() / img.mean())


@pytest.mark.parametrize(("condition", "statistic"), [("fog", relative_contrast), ("night", np.mean)])
def test_adverse_conditions_render_the_target_scene_veiled_or_darker(condition: str, statistic) -> None:
    """Fog and night are the target scene for the same generator state: fog veils it (airlight lowers
    contrast relative to brightness), night darkens it."""
    for i in range(3):
        clear_img, clear_lab = synthetic.render_scene(
            "target", synthetic.frame_rng(0, "target", "val", i), SIZE
        )
        adverse_img, adverse_lab = synthetic.render_scene(
            condition, synthetic.frame_rng(0, "target", "val", i), SIZE
        )
        np.testing.assert_array_equal(adverse_lab, clear_lab)
        assert statistic(adverse_img.astype(np.float32)) < 0.8 * statistic(clear_img.astype(np.float32))


@pytest.mark.parametrize("bad", [{"domain": "mars"}, {"split": "dev"}, {"n": 0}, {"size": (8, 8)}])
def test_invalid_requests_raise_config_errors(tmp_path: Path, bad: dict) -> None:
    kwargs = {"domain": "target", "n": 1, "size": SIZE, "split": "train", **bad}
    with pytest.raises(ConfigError):
        synthetic.generate(tmp_path, kwargs.pop("domain"), kwargs.pop("n"), **kwargs)


def test_cli_synth_writes_n_frames(tmp_path: Path) -> None:
    from stvm_sdk.cli.app import app
    from typer.testing import CliRunner

    out = tmp_path / "cs"
    result = CliRunner().invoke(
        app,
        [
            "synth",
            "--domain",
            "fog",
            "--n",
            "4",
            "--out",
            str(out),
            "--size",
            "64x128",
            "--seed",
            "2",
            "--split",
            "val",
            "--workers",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["n"] == 4 and summary["domain"] == "fog"
    assert len(list((out / "leftImg8bit" / "val" / "synthfog").glob("*_leftImg8bit.png"))) == 4
    assert len(list((out / "gtFine" / "val" / "synthfog").glob("*_gtFine_labelTrainIds.png"))) == 4


def test_cli_synth_rejects_a_malformed_size(tmp_path: Path) -> None:
    from stvm_sdk.cli.app import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--size", "big", "--n", "1"])
    assert result.exit_code == 2
    assert "256x512" in result.output
