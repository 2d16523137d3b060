"""Frame discovery, decoding (palette, gray, RGBA, 16-bit) and label matching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stvm_sdk.data import find_images, read_image, read_label, scan_frames
from stvm_sdk.data.frames import label_candidates
from stvm_sdk.errors import DataError


def test_reads_the_real_cityscapes_sample_in_official_layout(cityscapes_sample: Path) -> None:
    folder = scan_frames(cityscapes_sample, cityscapes_sample)
    assert [f.rel.as_posix() for f in folder.frames] == [
        "val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    ]
    frame = folder.frames[0]
    assert frame.label is not None and frame.label.name.endswith("_gtFine_labelTrainIds.png")
    img, lab = read_image(frame.image), read_label(frame.label)
    assert img.shape == (128, 256, 3) and img.dtype == np.uint8
    assert lab.shape == (128, 256) and set(np.unique(lab)) <= set(range(19)) | {255}


def test_cityscapes_label_ids_map_to_the_same_train_ids(cityscapes_sample: Path) -> None:
    base = cityscapes_sample / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_"
    from_ids = read_label(Path(f"{base}labelIds.png"))
    from_train = read_label(Path(f"{base}labelTrainIds.png"))
    # The sample's two files were downscaled separately, so a few boundary pixels (77 of 32768) differ.
    assert float((from_ids == from_train).mean()) > 0.995


def test_palette_png_is_expanded_to_rgb_not_read_as_indices(cityscapes_sample: Path) -> None:
    path = cityscapes_sample / "extra/demo_unlabeled_1024x512.png"
    with Image.open(path) as im:
        assert im.mode == "P"
        want = np.asarray(im.convert("RGB"))
    got = read_image(path)
    assert got.shape == (512, 1024, 3) and np.array_equal(got, want)


def test_grayscale_rgba_and_16bit_images_become_rgb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STVM_MIN_SIDE", "1")  # tiny images: only the colour conversion is under test
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    assert np.array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, 2))
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 255
    rgba[0, 0, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (3, 4, 3) and out[1, 1, 0] == 200 and out[0, 0, 0] == 0
    sixteen = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "s.png")
    out16 = read_image(tmp_path / "s.png")
    assert out16.shape == (3, 4, 3) and out16[-1, -1, 0] == round(55000 / 65535 * 255)


def test_discovery_is_recursive_sorted_and_skips_annotations(tmp_path: Path) -> None:
    for rel in ["b/2.jpg", "a/1.png", "a/sub/3.webp", "c/x_gtFine_labelIds.png", "notes.txt"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".txt":
            p.write_text("x")
        else:
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p)
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == [
        "a/1.png",
        "a/sub/3.webp",
        "b/2.jpg",
    ]


def test_labels_match_by_relative_path_and_stem(tmp_path: Path) -> None:
    (tmp_path / "img/a/b").mkdir(parents=True)
    (tmp_path / "lab/a/b").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img/a/b/f1.jpg")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "img/a/b/f2.jpg")
    Image.fromarray(np.ones((32, 32), np.uint8)).save(tmp_path / "lab/a/b/f1.png")
    folder = scan_frames(tmp_path / "img", tmp_path / "lab")
    assert folder.frames[0].label == tmp_path / "lab/a/b/f1.png" and folder.frames[1].label is None
    assert len(folder.labelled) == 1


def test_cityscapes_suffix_rules_prefer_train_ids() -> None:
    cands = label_candidates(Path("val/x/x_000000_000001_leftImg8bit.png"))
    assert [c.name for c in cands[:2]] == [
        "x_000000_000001_gtFine_labelTrainIds.png",
        "x_000000_000001_gtFine_labelIds.png",
    ]


def test_corrupt_files_are_skipped_and_counted(frames: tuple[Path, Path]) -> None:
    images, _ = frames
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "empty.jpg").write_bytes(b"")
    folder = scan_frames(images)
    assert len(folder) == 6 and len(folder.skipped) == 2
    assert folder.skip_report()["by_reason"] == {"not_an_image": 1, "unreadable": 1}


def test_folder_without_readable_images_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no usable frames"):
        scan_frames(tmp_path)
    (tmp_path / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="1 skipped: 1 not an image"):
        scan_frames(tmp_path)
    with pytest.raises(DataError, match="not found"):
        scan_frames(tmp_path / "missing")


def test_colour_label_images_are_rejected(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "l.png")
    with pytest.raises(DataError, match="colour image"):
        read_label(tmp_path / "l.png")
