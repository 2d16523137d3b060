"""The bad-input matrix: every command against what users actually hand it, through the Typer runner.

The harness (workspace, case, the checks every case gets: one error line or one JSON object, and no file
changed outside the command's output folder) is in ``tests/matrix.py``; ``test_right_answers_*`` files
are the second matrix, whose cases assert the right answer as well.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matrix import RUNNER, Case, Workspace, check_case
from PIL import Image
from stvm_sdk.cli.app import app
from support import TinySegNet


def _png_with_bad_data(h: int = 32, w: int = 64) -> bytes:
    """A PNG whose header and chunk CRCs are valid but whose compressed data does not decode."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 64)
        + chunk(b"IEND", b"")
    )


def _png_header(w: int, h: int, bit_depth: int = 8, colour: int = 2) -> bytes:
    """A small, complete PNG declaring ``w x h`` pixels (a decompression bomb when large)."""
    raw = zlib.compress(b"\x00" * 64, 9)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", w, h, bit_depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


class _Exploit:
    """A pickle that would create a file if it were ever unpickled."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.flag}",))


def _skipped(reason: str, n: int = 1) -> Callable[[dict[str, Any]], None]:
    def check(summary: dict[str, Any]) -> None:
        assert summary["images_skipped"]["by_reason"] == {reason: n}, summary["images_skipped"]
        assert summary["frames_used"] == 4, summary

    return check


def _used(n: int) -> Callable[[dict[str, Any]], None]:
    def check(summary: dict[str, Any]) -> None:
        assert summary["frames_used"] == n and summary["images_skipped"]["total"] == 0, summary

    return check


def _rgb(h: int = 32, w: int = 64, mode: str = "RGB") -> Image.Image:
    arr = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


# --- model files --------------------------------------------------------------------------------------


def c_random_bytes(w: Workspace) -> Case:
    p = w.file("models/random.pt", np.random.default_rng(1).bytes(4096))
    return Case(w.adapt(source=p), "error", "is not a model file")


def c_random_bytes_trusted(w: Workspace) -> Case:
    p = w.file("models/random.pt", np.random.default_rng(1).bytes(4096))
    return Case(w.adapt("--trust-pickle", source=p), "error", "is not a model file")


def c_zero_byte_model(w: Workspace) -> Case:
    return Case(w.adapt(source=w.file("models/empty.pt", b"")), "error", "is empty (0 bytes)")


def c_truncated_checkpoint(w: Workspace) -> Case:
    data = w.model.read_bytes()
    p = w.file("models/cut.pt", data[: len(data) // 2])
    return Case(w.adapt(source=p), "error", "truncated or corrupt archive")


def c_pickle_without_opt_in(w: Workspace) -> Case:
    p = w.models / "pickled.pt"
    torch.save(TinySegNet(), p)
    return Case(w.adapt(source=p), "error", "pass --trust-pickle")


def c_pickle_with_opt_in(w: Workspace) -> Case:
    p = w.models / "pickled.pt"
    torch.save(TinySegNet(), p)
    return Case(w.adapt("--trust-pickle", source=p), "ok", out=w.root / "run", check=_used(4))


def c_plain_pickle_without_opt_in(w: Workspace) -> Case:
    p = w.models / "plain.pkl"
    p.write_bytes(pickle.dumps(TinySegNet()))
    return Case(w.adapt(source=p), "error", "pass --trust-pickle")


def c_exploit_pickle_is_never_run(w: Workspace) -> Case:
    flag = w.root / "pwned"
    p = w.models / "evil.pt"
    p.write_bytes(pickle.dumps(_Exploit(flag)))
    return Case(w.adapt(source=p), "error", "pass --trust-pickle", extra={"flag": flag})


def c_tensor_stream_trusted(w: Workspace) -> Case:
    p = w.models / "tensor.pt"
    torch.save(torch.zeros(3), p)
    return Case(w.adapt("--trust-pickle", source=p), "error", "holds a Tensor, not a model")


def c_pickle_of_missing_class(w: Workspace) -> Case:
    # A pickle of an nn.Module subclass whose module is not importable here.
    blob = pickle.dumps(TinySegNet()).replace(b"support", b"nosuchm")  # same length: a valid pickle
    p = w.file("models/missing_class.pt", blob)
    return Case(w.adapt("--trust-pickle", source=p), "error", "needs the Python module 'nosuchm'")


def _zip_pickle_of_missing_module(path: Path) -> Path:
    """A torch.save archive (zip) of an nn.Module whose class lives in a module gone since it was saved."""
    import sys
    import types

    mod = types.ModuleType("gone_models")
    net_cls = type("GoneNet", (TinySegNet,), {"__module__": "gone_models"})
    mod.GoneNet = net_cls  # type: ignore[attr-defined]
    sys.modules["gone_models"] = mod
    try:
        torch.save(net_cls(), path)
    finally:
        del sys.modules["gone_models"]
    return path


def c_info_zip_pickle_of_missing_module(w: Workspace) -> Case:
    p = _zip_pickle_of_missing_module(w.models / "gone.pt")
    args = ["info", str(p), "--trust-pickle", "--json"]
    return Case(args, "error", "needs the Python module 'gone_models'")


def c_export_pickle_of_missing_class(w: Workspace) -> Case:
    blob = pickle.dumps(TinySegNet()).replace(b"support", b"nosuchm")  # same length: a valid pickle
    p = w.file("models/missing_class.pkl", blob)
    return Case(
        ["export", str(p), "--trust-pickle", "--out", str(w.root / "export"), "--json"],
        "error",
        "needs the Python module 'nosuchm'",
        out=w.root / "export",
    )


def c_pickle_of_missing_attribute(w: Workspace) -> Case:
    # The module imports, but the class is gone from it (renamed since the pickle was made).
    blob = pickle.dumps(TinySegNet()).replace(b"TinySegNet", b"TinyGoneNt")  # same length
    p = w.file("models/renamed_class.pt", blob)
    return Case(w.adapt("--trust-pickle", source=p), "error", "cannot unpickle")


def c_wrong_class_count(w: Workspace) -> Case:
    return Case(w.adapt("--num-classes", "19"), "error", "has 5 classes but --num-classes is 19")


def c_unknown_arch(w: Workspace) -> Case:
    return Case(
        w.adapt(source=w.checkpoint("magic.pt", arch="resnet_magic")), "error", "unknown arch 'resnet_magic'"
    )


def c_nan_weights(w: Workspace) -> Case:
    ckpt = torch.load(w.model, weights_only=True)
    state = dict(ckpt["state_dict"])
    key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 4)
    state[key] = torch.full_like(state[key], float("nan"))
    return Case(w.adapt(source=w.checkpoint("nan.pt", state_dict=state)), "error", "NaN or inf values")


def _scripted(w: Workspace) -> Path:
    p = w.models / "tiny.ts"
    torch.jit.save(torch.jit.script(TinySegNet().eval()), str(p))
    return p


def c_torchscript_stvm(w: Workspace) -> Case:
    return Case(w.adapt(source=_scripted(w)), "error", "--method stvm hooks the classifier")


def c_torchscript_tent(w: Workspace) -> Case:
    return Case(w.adapt("--method", "tent", source=_scripted(w)), "error", "--method tent re-parametrises")


def c_onnx_as_source(w: Workspace) -> Case:
    p = w.models / "model.onnx"
    torch.onnx.export(TinySegNet().eval(), (torch.zeros(1, 3, 32, 64),), str(p), dynamo=False)
    return Case(w.adapt(source=p), "error", "is an ONNX graph")


def c_missing_model(w: Workspace) -> Case:
    return Case(w.adapt(source=w.models / "nope.pt"), "error", "model file not found")


def c_model_is_a_folder(w: Workspace) -> Case:
    return Case(w.adapt(source=w.models), "error", "is a folder but not a model folder the SDK reads")


# --- frames -------------------------------------------------------------------------------------------


def c_empty_target(w: Workspace) -> Case:
    (w.root / "empty").mkdir()
    return Case(w.adapt(target=w.root / "empty"), "error", "no usable frames")


def c_only_non_images(w: Workspace) -> Case:
    w.file("junk/a.png", b"this is text")
    w.file("junk/b.jpg", b"more text")
    return Case(w.adapt(target=w.root / "junk"), "error", "2 skipped: 2 not an image")


def c_zero_byte_frame(w: Workspace) -> Case:
    return Case(
        w.adapt(target=w.frames_plus("zero.png", b"")),
        "ok",
        out=w.root / "run",
        check=_skipped("not_an_image"),
    )


def c_truncated_frame(w: Workspace) -> Case:
    buf = io.BytesIO()
    _rgb().save(buf, format="PNG")
    data = buf.getvalue()
    target = w.frames_plus("cut.png", data[: len(data) // 2])
    return Case(w.adapt(target=target), "ok", out=w.root / "run", check=_skipped("unreadable"))


def c_undecodable_frame(w: Workspace) -> Case:
    # Passes the header scan; fails while decoding (decision 0's BN pass and training both read it).
    target = w.frames_plus("bad_data.png", _png_with_bad_data())
    return Case(w.adapt(target=target), "ok", out=w.root / "run", check=_skipped("unreadable"))


def c_decompression_bomb(w: Workspace) -> Case:
    target = w.frames_plus("bomb.png", _png_header(30000, 30000))
    return Case(w.adapt(target=target), "ok", out=w.root / "run", check=_skipped("too_large"))


def c_one_bit_giant(w: Workspace) -> Case:
    # 10000x10000 1-bit: under PIL's own limit, 12 MB once decoded, 9 GB as float frames. Never decoded.
    target = w.frames_plus("giant.png", _png_header(10000, 10000, bit_depth=1, colour=0))
    return Case(w.adapt(target=target), "ok", out=w.root / "run", check=_skipped("too_large"))


def c_sixteen_bit_frames(w: Workspace) -> Case:
    arr = (np.random.default_rng(0).integers(0, 65535, (32, 64))).astype(np.uint16)
    d = w.frame_folder("f16", [Image.fromarray(arr) for _ in range(2)])
    return Case(w.adapt(target=d), "ok", out=w.root / "run", check=_used(2))


def c_palette_frames(w: Workspace) -> Case:
    d = w.frame_folder("pal", [_rgb().convert("P") for _ in range(2)])
    return Case(w.adapt(target=d), "ok", out=w.root / "run", check=_used(2))


def c_rgba_frames(w: Workspace) -> Case:
    d = w.frame_folder("rgba", [_rgb(mode="RGBA") for _ in range(2)])
    return Case(w.adapt(target=d), "ok", out=w.root / "run", check=_used(2))


def c_gray_frames(w: Workspace) -> Case:
    d = w.frame_folder("gray", [_rgb(mode="L") for _ in range(2)])
    return Case(w.adapt(target=d), "ok", out=w.root / "run", check=_used(2))


def c_one_pixel_frame(w: Workspace) -> Case:
    target = w.frames_plus("dot.png", image=_rgb(1, 1))
    return Case(w.adapt(target=target), "ok", out=w.root / "run", check=_skipped("too_small"))


def c_only_tiny_frames(w: Workspace) -> Case:
    d = w.frame_folder("tiny", [_rgb(1, 1), _rgb(4, 4)])
    return Case(w.adapt(target=d), "error", "2 skipped: 2 too small")


def c_frames_smaller_than_crop(w: Workspace) -> Case:
    args = w.adapt()
    args[args.index("--crop") + 1] = "64x128"  # frames are 32x64: padded, with a warning
    return Case(args, "ok", out=w.root / "run", check=_used(4))


def c_symlink_loop(w: Workspace) -> Case:
    os.symlink("loop_b.png", w.frames / "loop_a.png")
    os.symlink("loop_a.png", w.frames / "loop_b.png")
    return Case(w.adapt(), "ok", out=w.root / "run", check=_skipped("unreadable", 2))


def c_unicode_names(w: Workspace) -> Case:
    d = w.frame_folder("Straße_東京", [_rgb() for _ in range(2)])
    (d / "f0.png").rename(d / "кадр_ü.png")
    return Case(w.adapt(target=d), "ok", out=w.root / "run", check=_used(2))


def c_target_is_a_file(w: Workspace) -> Case:
    return Case(w.adapt(target=w.model), "error", "is a file, not a folder")


# --- labels -------------------------------------------------------------------------------------------


def _labels_like(w: Workspace, name: str, fill: Callable[[np.ndarray], np.ndarray]) -> Path:
    root = w.root / name
    for p in w.labels.rglob("*.png"):
        q = root / p.relative_to(w.labels)
        q.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fill(np.asarray(Image.open(p))).astype(np.uint8)).save(q)
    return root


def c_labels_out_of_range(w: Workspace) -> Case:
    labels = _labels_like(w, "lab19", lambda a: np.where(a == 4, 19, a))  # 19 classes vs the 5-class model
    return Case(w.adapt("--labels", labels), "error", "holds class ids 19 but the model has 5 classes")


def c_labels_out_of_range_ignored(w: Workspace) -> Case:
    labels = _labels_like(w, "lab19", lambda a: np.where(a == 4, 19, a))
    return Case(
        w.adapt("--labels", labels, "--ignore-out-of-range"), "ok", out=w.root / "run", check=_used(4)
    )


def c_labels_wrong_size(w: Workspace) -> Case:
    labels = _labels_like(w, "lab_small", lambda a: a[::2, ::2])
    return Case(w.adapt("--labels", labels), "error", "a label must have its frame's size")


def c_labels_none_match(w: Workspace) -> Case:
    other = w.root / "other_labels"
    other.mkdir()
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(other / "unrelated.png")
    return Case(w.adapt("--labels", other), "error", "has a label in")


def c_labels_folder_missing(w: Workspace) -> Case:
    return Case(w.adapt("--labels", w.root / "no_labels"), "error", "labels folder not found")


def c_eval_labels_out_of_range(w: Workspace) -> Case:
    labels = _labels_like(w, "lab200", lambda a: np.where(a == 4, 200, a))
    args = ["eval", str(w.model), "--images", str(w.frames), "--labels", str(labels), "--json"]
    return Case(args, "error", "holds class ids 200")


# --- run directories ----------------------------------------------------------------------------------


def c_out_is_a_users_folder(w: Workspace) -> Case:
    mine = w.root / "mine"
    for rel, text in [
        ("model.pt", "my model"),
        ("summary.json", "{}"),
        ("notes.txt", "n"),
        ("checkpoints/readme.txt", "r"),
    ]:
        (mine / rel).parent.mkdir(parents=True, exist_ok=True)
        (mine / rel).write_text(text)
    args = w.adapt()
    args[args.index("--out") + 1] = str(mine)
    return Case(args, "error", "is a folder that stvm_sdk did not make")


def c_source_inside_out(w: Workspace) -> Case:
    args = w.adapt()
    args[args.index("--out") + 1] = str(w.models)
    return Case(args, "error", "contains the input")


def c_source_inside_new_run_dir(w: Workspace) -> Case:
    # Even a folder the SDK made: a run never writes over the model it adapts.
    run = w.root / "run"
    (run / ".stvm_sdk.json").parent.mkdir(parents=True)
    (run / ".stvm_sdk.json").write_text('{"format": "stvm_sdk.output/1", "kind": "run"}')
    source = run / "model.pt"
    source.write_bytes(w.model.read_bytes())
    return Case(w.adapt(source=source), "error", "contains the input")


def c_out_inside_target(w: Workspace) -> Case:
    args = w.adapt()
    args[args.index("--out") + 1] = str(w.frames / "run")
    return Case(args, "error", "is inside the input folder")


def c_out_read_only(w: Workspace) -> Case:
    ro = w.root / "locked"
    ro.mkdir()
    args = w.adapt()
    args[args.index("--out") + 1] = str(ro / "run")
    return Case(args, "error", "permission denied", read_only=ro)


def c_out_is_a_file(w: Workspace) -> Case:
    f = w.file("a_file", b"x")
    args = w.adapt()
    args[args.index("--out") + 1] = str(f)
    return Case(args, "error", "is a file, not a folder")


def c_out_is_an_export_folder(w: Workspace) -> Case:
    exp = w.root / "export"
    exp.mkdir()
    (exp / ".stvm_sdk.json").write_text('{"format": "stvm_sdk.output/1", "kind": "export"}')
    args = w.adapt()
    args[args.index("--out") + 1] = str(exp)
    return Case(args, "error", "holds an export (stvm export), not an adaptation run")


def _finished_run(w: Workspace) -> Path:
    code = RUNNER.invoke(app, w.adapt()).exit_code
    assert code == 0
    return w.root / "run"


def c_existing_run_without_resume(w: Workspace) -> Case:
    run = _finished_run(w)
    return Case(w.adapt(), "error", "already holds a run", out=run)


def c_resume_other_source(w: Workspace) -> Case:
    run = _finished_run(w)
    other = w.checkpoint("other.pt", class_names=["a", "b", "c", "d", "e"])
    return Case(w.adapt("--resume", source=other), "error", "--source is not the run's", out=run)


def c_resume_other_target(w: Workspace) -> Case:
    run = _finished_run(w)
    d = w.frame_folder("elsewhere", [_rgb() for _ in range(2)])
    return Case(w.adapt("--resume", target=d), "error", "--target is not the run's", out=run)


def c_resume_other_class_count(w: Workspace) -> Case:
    run = _finished_run(w)
    from stvm_sdk.models import build_torchvision

    net = build_torchvision("lraspp_mobilenet_v3_large", 7)
    seven = w.checkpoint("seven.pt", num_classes=7, state_dict=net.state_dict(), class_names=None)
    return Case(w.adapt("--resume", source=seven), "error", "--source is not the run's", out=run)


# --- configs ------------------------------------------------------------------------------------------


def _config(w: Workspace, text: str) -> list[str]:
    cfg = w.file("cfg.toml", text.encode())
    return w.adapt("--config", cfg)


def c_config_unknown_key(w: Workspace) -> Case:
    return Case(
        _config(w, "[methods.stvm.metric]\nalfa = 3\n"),
        "error",
        "unknown config key(s) methods.stvm.metric.alfa",
    )


def c_config_wrong_type(w: Workspace) -> Case:
    return Case(_config(w, '[optim]\nlr = "fast"\n'), "error", "config key 'optim.lr' must be float")


def c_config_negative_lr(w: Workspace) -> Case:
    return Case(_config(w, "[optim]\nlr = -0.1\n"), "error", "optim.lr must be > 0")


def c_config_unparsable(w: Workspace) -> Case:
    return Case(_config(w, "[run\niters = 3\n"), "error", "cannot parse config")


def c_zero_iters(w: Workspace) -> Case:
    args = w.adapt()
    args[args.index("--iters") + 1] = "0"
    return Case(args, "error", "run.iters must be >= 1")


def c_zero_batch(w: Workspace) -> Case:
    args = w.adapt()
    args[args.index("--batch-size") + 1] = "0"
    return Case(args, "error", "data.batch_size must be >= 1")


def c_unknown_device(w: Workspace) -> Case:
    return Case(w.adapt("--device", "tpu"), "error", "unknown device 'tpu'")


def c_unknown_method(w: Workspace) -> Case:
    return Case(w.adapt("--method", "stvn"), "error", "did you mean 'stvm'?")


def c_bad_crop(w: Workspace) -> Case:
    args = w.adapt()
    args[args.index("--crop") + 1] = "32by64"
    return Case(args, "error", "--crop '32by64' must look like HxW")


# --- export, bench, predict, train-source, synth ------------------------------------------------------


def c_export_read_only(w: Workspace) -> Case:
    ro = w.root / "locked"
    ro.mkdir()
    return Case(
        ["export", str(w.model), "--out", str(ro / "export"), "--json"],
        "error",
        "permission denied",
        read_only=ro,
    )


def c_export_nan_weights(w: Workspace) -> Case:
    ckpt = torch.load(w.model, weights_only=True)
    state = {
        k: (torch.full_like(v, float("nan")) if v.is_floating_point() else v)
        for k, v in ckpt["state_dict"].items()
    }
    p = w.checkpoint("nan.pt", state_dict=state)
    return Case(
        ["export", str(p), "--out", str(w.root / "export"), "--json"], "error", "refusing to export it"
    )


def c_export_random_bytes(w: Workspace) -> Case:
    p = w.file("models/random.pt", np.random.default_rng(2).bytes(999))
    return Case(["export", str(p), "--out", str(w.root / "export")], "error", "is not a model file")


def c_export_into_users_folder(w: Workspace) -> Case:
    mine = w.root / "mine"
    (mine / "keep.txt").parent.mkdir(parents=True)
    (mine / "keep.txt").write_text("x")
    return Case(["export", str(w.model), "--out", str(mine)], "error", "did not make")


def c_bench_random_bytes_onnx(w: Workspace) -> Case:
    p = w.file("models/random.onnx", np.random.default_rng(3).bytes(999))
    return Case(["bench", str(p), "--iters", "1", "--warmup", "0", "--json"], "error", "cannot load")


def c_bench_unknown_backend(w: Workspace) -> Case:
    return Case(["bench", str(w.model), "--backend", "onnx", "--json"], "error", "did you mean 'ort'?")


def c_bench_bad_shape(w: Workspace) -> Case:
    return Case(["bench", str(w.model), "--shape", "512by1024", "--json"], "error", "is not HxW")


def _onnx(w: Workspace) -> Path:
    """A graph from another tool, with the one-field sidecar that says how to feed it (a graph that
    states its normalisation nowhere is refused: test_right_answers_deploy.py)."""
    p = w.models / "tiny.onnx"
    torch.onnx.export(TinySegNet().eval(), (torch.zeros(1, 3, 32, 64),), str(p), dynamo=False,
                      input_names=["image"], dynamic_axes={"image": {2: "h", 3: "w"}})  # fmt: skip
    p.with_suffix(".json").write_text('{"input": {"normalization_baked": true}}')
    return p


def c_bench_onnx_with_escaping_external_data(w: Workspace) -> Case:
    import onnx

    proto = onnx.load(str(_onnx(w)))
    onnx.save_model(
        proto, str(w.models / "ext.onnx"), save_as_external_data=True, location="ext.data", size_threshold=0
    )
    proto = onnx.load(str(w.models / "ext.onnx"), load_external_data=False)
    w.file("outside.data", (w.models / "ext.data").read_bytes())
    for t in proto.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../outside.data"
    onnx.save_model(proto, str(w.models / "evil.onnx"))
    return Case(["bench", str(w.models / "evil.onnx"), "--iters", "1", "--json"], "error", "cannot load")


def c_predict_read_only(w: Workspace) -> Case:
    ro = w.root / "locked"
    ro.mkdir()
    args = ["predict", str(_onnx(w)), "--input", str(w.frames), "--out", str(ro / "pred"), "--json"]
    return Case(args, "error", "permission denied", read_only=ro)


def c_predict_random_bytes_onnx(w: Workspace) -> Case:
    p = w.file("models/random.onnx", np.random.default_rng(4).bytes(999))
    return Case(
        ["predict", str(p), "--input", str(w.frames), "--out", str(w.root / "pred")], "error", "cannot load"
    )


def c_predict_out_inside_input(w: Workspace) -> Case:
    args = ["predict", str(_onnx(w)), "--input", str(w.frames), "--out", str(w.frames / "pred")]
    return Case(args, "error", "is inside the input folder")


def c_predict_skips_undecodable_frames(w: Workspace) -> Case:
    target = w.frames_plus("bad_data.png", _png_with_bad_data())
    args = ["predict", str(_onnx(w)), "--input", str(target), "--out", str(w.root / "pred"), "--json"]

    def check(summary: dict[str, Any]) -> None:
        assert summary["frames"] == 4 and summary["images_skipped"]["by_reason"] == {"unreadable": 1}, summary

    return Case(args, "ok", out=w.root / "pred", check=check)


def c_train_source_over_a_users_file(w: Workspace) -> Case:
    mine = w.file("mine.pt", b"my own file")
    args = ["train-source", "--images", str(w.frames), "--labels", str(w.labels), "--out", str(mine),
            "--num-classes", "5", "--iters", "1", "--json"]  # fmt: skip
    return Case(args, "error", "was not written by stvm_sdk")


def c_synth_into_users_folder(w: Workspace) -> Case:
    return Case(["synth", "--n", "1", "--out", str(w.models), "--json"], "error", "did not make")


CASES = {name[2:]: fn for name, fn in sorted(globals().items()) if name.startswith("c_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, tmp_path: Path, lraspp_checkpoint: Path) -> None:
    w = Workspace(tmp_path / "ws", lraspp_checkpoint)
    check_case(CASES[name](w), w)
