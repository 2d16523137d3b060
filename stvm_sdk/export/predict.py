"""`stvm predict`: run a `.pt`, `.onnx` or `.engine` on frames or a video and write what it sees.

For every frame: ``<name>_color.png`` (class map in the Cityscapes palette), ``<name>_overlay.jpg``
(colours blended over the frame), with ``confidence=True`` ``<name>_conf.png`` (max softmax
probability, white = confident; needs a logits graph, not a baked-argmax one) and, with ``ids``,
``<name>_trainIds.png`` or ``<name>_labelIds.png`` (raw class ids). Output names mirror the input
tree, one name per frame (frames whose names differ only in the extension keep it: ``a_png``,
``a_jpg``; :func:`stvm_sdk.boundary.names.output_stems`); ``legend.png`` at the top of the output folder
shows each class's colour. A video gives ``<stem>_overlay.mp4`` at its own frame rate; it needs OpenCV
(``cv2``, the ``video`` extra): without it the command says how to install it or how to extract frames.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stvm_sdk.boundary.frames import FrameRejected
from stvm_sdk.boundary.names import output_stems
from stvm_sdk.boundary.outputs import claim_dir, write_bytes_atomic
from stvm_sdk.data.video import VIDEO_EXTENSIONS, video_frames
from stvm_sdk.errors import ConfigError, DataError, OutputError
from stvm_sdk.export.palette import (
    ID_FORMATS,
    class_id_image,
    colorize,
    confidence_image,
    legend_image,
    overlay,
    palette_for,
)
from stvm_sdk.runners.base import Runner

__all__ = ["VIDEO_EXTENSIONS", "PredictSummary", "output_stems", "predict_folder", "predict_video"]

MAX_MAP_CLASSES = 255  # class ids 0..254 in an 8-bit map; 255 is the ignore colour


@dataclass
class PredictSummary:
    """How many frames were written where."""

    frames: int
    out_dir: Path
    video: Path | None = None
    skipped: int = 0
    skip_report: dict[str, Any] | None = None
    fps: float | None = None  # a video's frame rate (the overlay video's too)
    frames_expected: int | None = None  # the frame count a video's header announces (None: unknown)
    warnings: list[str] = field(default_factory=list)  # work not done: a video that ended early


def infer(
    runner: Runner, image: np.ndarray, size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class map ``[H,W]`` (at the frame's size) and max-probability map (None for class outputs)."""
    import torch
    import torch.nn.functional as nnf

    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0
    h, w = image.shape[:2]
    if size is not None and size != (h, w):
        x = nnf.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    out = torch.from_numpy(np.asarray(runner(x.numpy())))
    if out.dim() == 3:  # baked argmax: nearest back to the frame size
        cls = nnf.interpolate(out[:, None].float(), size=(h, w), mode="nearest")[0, 0].to(torch.uint8)
        return cls.numpy(), None
    logits = nnf.interpolate(out.float(), size=(h, w), mode="bilinear", align_corners=False)
    prob = logits.softmax(1)[0]
    conf, cls = prob.max(0)
    return cls.to(torch.uint8).numpy(), conf.numpy()


def render(
    image: np.ndarray, classes: np.ndarray, conf: np.ndarray | None, palette: list[list[int]]
) -> dict[str, np.ndarray]:
    """The images written per frame, keyed by suffix."""
    colour = colorize(classes, palette)
    out = {"color": colour, "overlay": overlay(image, colour)}
    if conf is not None:
        out["conf"] = confidence_image(conf)
    return out


def save_image(arr: np.ndarray, path: Path, **options: Any) -> Path:
    """Encode ``arr`` (PNG or JPEG by suffix) and write it atomically."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(
        buf, format="JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG", **options
    )
    return write_bytes_atomic(buf.getvalue(), path)


def _write(images: dict[str, np.ndarray], stem: Path, confidence: bool) -> None:
    save_image(images["color"], stem.with_name(stem.name + "_color.png"))
    for key in ID_FORMATS:
        if key in images:
            save_image(images[key], stem.with_name(f"{stem.name}_{key}.png"))
    save_image(images["overlay"], stem.with_name(stem.name + "_overlay.jpg"), quality=90)
    if confidence and "conf" in images:
        save_image(images["conf"], stem.with_name(stem.name + "_conf.png"))


def _palette(runner: Runner) -> list[list[int]]:
    return palette_for(runner.num_classes or 19)


def _check_request(runner: Runner, ids: str | None, confidence: bool) -> None:
    """Refuse what cannot be written before anything is: a bad ``ids`` (a 1x1 map runs the same
    checks), confidence from a class-id graph, more classes than an 8-bit class map holds."""
    if confidence and runner.output == "classes":
        raise DataError(
            "--confidence needs logits, but this graph outputs class ids (exported with --argmax)"
        )
    if runner.num_classes is not None and runner.num_classes > MAX_MAP_CLASSES:
        raise ConfigError(
            f"{runner.path.name} has {runner.num_classes} classes; predict writes 8-bit class maps "
            f"(255 = ignore), which hold at most {MAX_MAP_CLASSES}"
        )
    if ids is not None:
        class_id_image(np.zeros((1, 1), np.uint8), ids, runner.num_classes or 19)


def write_legend(runner: Runner, out_dir: Path) -> Path:
    """``legend.png``: each class's colour with its id and name (from the model or the sidecar)."""
    k = runner.num_classes or 19
    names = runner.class_names or [str(i) for i in range(k)]
    return save_image(legend_image(list(names), palette_for(k)), out_dir / "legend.png")


def _with_ids(images: dict[str, np.ndarray], classes: np.ndarray, ids: str | None, k: int) -> dict:
    if ids is not None:
        images[ids] = class_id_image(classes, ids, k)
    return images


def predict_folder(
    runner: Runner,
    input_dir: Path,
    out_dir: Path,
    *,
    size: tuple[int, int] | None = None,
    confidence: bool = False,
    progress: Callable[[int, int], None] | None = None,
    ids: str | None = None,
) -> PredictSummary:
    """Predict every readable image under ``input_dir`` (see the module docstring for the outputs);
    ``ids`` (``"trainIds"`` or ``"labelIds"``) also writes raw class-id PNGs."""
    from stvm_sdk.data.frames import scan_frames
    from stvm_sdk.data.images import read_image

    _check_request(runner, ids, confidence)
    folder = scan_frames(input_dir)
    stems = output_stems([f.rel for f in folder.frames])  # a.png, a.jpg: a_png_*, a_jpg_*
    claim_dir(out_dir, "predict", inputs=(runner.path, input_dir))
    write_legend(runner, out_dir)
    palette = _palette(runner)
    written = 0
    for i, frame in enumerate(folder.frames):
        try:
            image = read_image(frame.image)
        except FrameRejected as exc:  # passed the header scan, fails to decode: skip and count
            folder.reject(exc)
            continue
        cls, conf = infer(runner, image, size)
        images = _with_ids(render(image, cls, conf, palette), cls, ids, len(palette))
        _write(images, out_dir / stems[i], confidence)
        written += 1
        if progress:
            progress(i + 1, len(folder.frames))
    return PredictSummary(written, out_dir, skipped=len(folder.skipped), skip_report=folder.skip_report())


def predict_video(
    runner: Runner,
    video: Path,
    out_dir: Path,
    *,
    size: tuple[int, int] | None = None,
    confidence: bool = False,
    write_frames: bool = False,
    progress: Callable[[int, int], None] | None = None,
    ids: str | None = None,
) -> PredictSummary:
    """Predict every frame of ``video``; write ``<stem>_overlay.mp4`` at the video's frame rate (and
    per-frame images if asked).

    A file that does not open as a video, or whose first frame does not decode, is refused before anything
    is written. A video that stops decoding before the frame count its header announces (truncated or
    damaged) keeps the overlay of the frames read, and says so in ``warnings``. The overlay is written to
    a hidden temporary file and renamed at the end: a failure in between leaves no half-written video.
    """
    if not video.is_file():
        raise DataError(f"video not found: {video}")
    _check_request(runner, ids, confidence and write_frames)
    cv2, frames, fps, count = video_frames(video)  # refuses an unreadable file before anything is written
    claim_dir(out_dir, "predict", inputs=(runner.path, video))
    write_legend(runner, out_dir)
    target = out_dir / f"{video.stem}_overlay.mp4"
    tmp = target.with_name(f".{target.name}.tmp.mp4")
    writer, n, palette = None, 0, _palette(runner)
    done = False
    try:
        for image in frames:
            cls, conf = infer(runner, image, size)
            imgs = _with_ids(
                render(image, cls, conf, palette), cls, ids if write_frames else None, len(palette)
            )
            if writer is None:
                h, w = image.shape[:2]
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
                if not writer.isOpened():
                    raise OutputError(
                        f"cannot write {target.name} in {out_dir}: OpenCV has no mp4v encoder for "
                        f"{w}x{h} frames here; pass --frames for per-frame images"
                    )
            writer.write(np.ascontiguousarray(imgs["overlay"][:, :, ::-1]))
            if write_frames:
                _write(imgs, out_dir / f"{video.stem}_{n:06d}", confidence)
            n += 1
            if progress:
                progress(n, count)
        done = True
    finally:
        if writer is not None:
            writer.release()
        if not done:
            close = getattr(frames, "close", None)
            if close is not None:
                close()  # releases the reader now, not when collected
            tmp.unlink(missing_ok=True)
    if n == 0:  # the reader checks the first frame: only a reader that changed its mind gets here
        tmp.unlink(missing_ok=True)
        raise DataError(f"no frames could be read from {video}")
    tmp.replace(target)
    warnings = []
    if count and n < count:
        warnings.append(
            f"{video} ended after {n} of the {count} frames its header announces (the file is truncated "
            f"or damaged): {target.name} holds the {n} frame(s) read"
        )
    return PredictSummary(n, out_dir, video=target, fps=fps, frames_expected=count or None, warnings=warnings)
