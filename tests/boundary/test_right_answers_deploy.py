"""The right-answer matrix of the deploy side: exported graphs, their sidecars and their metadata, and the
commands that run them (`predict`, `bench`, `info`, `eval`, `export`).

Every case builds its inputs in a fresh workspace and asserts the right answer, not only the absence of a
traceback: a sidecar field out of its range is refused naming the file and the field; a class list that
is not the graph's is refused instead of scored; a corrupt sidecar is called corrupt; a graph without its
sidecar is run from its own ``metadata_props`` with the same predictions, and one that states its
normalisation nowhere is refused; frames whose names differ only in the extension give one output each;
numeric options out of range are refused naming the option. The harness is ``tests/matrix.py``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matrix import Case, Workspace, check_case
from PIL import Image

GRAPH_KEY = "stvm_sdk.deploy"


@pytest.fixture(scope="session")
def exports(lraspp_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The workspace's 5-class lraspp, rescaled so its classes vary over a frame (and depend on the
    normalisation), exported once with the normalisation in the graph and once without."""
    from stvm_sdk.export.pipeline import ExportOptions, export_model
    from stvm_sdk.models import load_model

    root = tmp_path_factory.mktemp("deploy_exports")
    ckpt = torch.load(lraspp_checkpoint, weights_only=True)
    state = dict(ckpt["state_dict"])
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = torch.full_like(value, 0.5)
        if key.startswith("classifier") and key.endswith("weight") and value.dim() == 4:
            state[key] = value * 20
    spread = root / "spread.pt"
    torch.save({**ckpt, "state_dict": state}, spread)
    model = load_model(spread)
    out = {"checkpoint": spread}
    for name, baked in (("baked", True), ("raw", False)):
        opts = ExportOptions(out_dir=root / name, shape="32x64", verify_frames=2, bake_normalize=baked)
        export_model(model, opts, source=spread)
        out[name] = root / name
    return out


def _copy(w: Workspace, src: Path, name: str) -> Path:
    """The export folder ``src`` copied into the workspace as ``name``; returns its ``model.onnx``."""
    dst = w.root / name
    shutil.copytree(src, dst)
    return dst / "model.onnx"


def _edit_sidecar(onnx_path: Path, **changes: Any) -> Path:
    side = onnx_path.with_suffix(".json")
    meta = json.loads(side.read_text())
    for key, value in changes.items():
        if value is _DROP:
            meta.pop(key, None)
        else:
            meta[key] = value
    side.write_text(json.dumps(meta))
    return side


_DROP = object()


def _strip_metadata(onnx_path: Path) -> None:
    """The graph as an earlier stvm export (or another tool) wrote it: no facts of its own."""
    import onnx

    proto = onnx.load(str(onnx_path))
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != GRAPH_KEY]
    del proto.metadata_props[:]
    for key, value in kept:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(onnx_path))


def _predict(model: Path, frames: Path, out: Path) -> list[str]:
    return ["predict", str(model), "--input", str(frames), "--out", str(out), "--json"]


def _eval(model: Path, w: Workspace, *extra: str) -> list[str]:
    return ["eval", str(model), "--images", str(w.frames), "--labels", str(w.labels), "--json", *extra]


def _bench(model: Path, *extra: str) -> list[str]:
    return ["bench", str(model), "--iters", "1", "--warmup", "0", "--shape", "32x64", "--no-edge", "--json",
            *extra]  # fmt: skip


def _maps(folder: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p)) for p in folder.rglob("*_color.png")}


# --- sidecar fields against the schema ----------------------------------------------------------------


def c_sidecar_std_zero_refused_by_eval(w: Workspace, e: dict[str, Path]) -> Case:
    onnx = _copy(w, e["raw"], "exp")
    _edit_sidecar(onnx, std=[0, 0, 0])
    return Case(_eval(onnx, w), "error", "model.json: field 'std' holds [0, 0, 0]; expected a list of 3")


def c_sidecar_std_nan_refused_by_predict(w: Workspace, e: dict[str, Path]) -> Case:
    onnx = _copy(w, e["raw"], "exp")
    _edit_sidecar(onnx, std=[0.2, float("nan"), 0.2])
    return Case(_predict(onnx, w.frames, w.root / "pred"), "error", "field 'std' holds [0.2, nan, 0.2]")


def c_sidecar_std_negative_refused_by_info(w: Workspace, e: dict[str, Path]) -> Case:
    onnx = _copy(w, e["baked"], "exp")
    _edit_sidecar(onnx, std=[0.2, -0.2, 0.2])
    return Case(["info", str(onnx), "--json"], "error", "field 'std' holds [0.2, -0.2, 0.2]; expected")


def c_sidecar_mean_wrong_length_refused_by_bench(w: Workspace, e: dict[str, Path]) -> Case:
    onnx = _copy(w, e["raw"], "exp")
    _edit_sidecar(onnx, mean=[0.4, 0.4])
    return Case(_bench(onnx), "error", "field 'mean' holds [0.4, 0.4]; expected a list of 3 finite numbers")


def c_sidecar_without_mean_for_raw_graph(w: Workspace, e: dict[str, Path]) -> Case:
    # Formerly ImageNet's statistics were assumed: now the graph's own metadata states them, and a sidecar
    # that drops them while saying the input is normalised outside the graph is refused.
    onnx = _copy(w, e["raw"], "exp")
    _edit_sidecar(onnx, mean=_DROP)
    return Case(_eval(onnx, w), "error", "field 'mean' is missing")


def c_sidecar_short_class_list(w: Workspace, e: dict[str, Path]) -> Case:
    onnx = _copy(w, e["baked"], "exp")
    _edit_sidecar(onnx, classes=["road", "sidewalk", "building"], num_classes=3, palette=_DROP)
    args = _eval(onnx, w, "--ignore-out-of-range")
    return Case(args, "error", "model.json: field 'num_classes' holds 3; expected 5")


def c_sidecar_short_class_list_graph_without_metadata(w: Workspace, e: dict[str, Path]) -> Case:
    # No metadata to compare with: the graph's own output channels refuse the short list.
    onnx = _copy(w, e["baked"], "exp")
    _strip_metadata(onnx)
    _edit_sidecar(onnx, classes=["road", "sidewalk", "building"], num_classes=3, palette=_DROP,
                  output=_DROP)  # fmt: skip
    args = _eval(onnx, w, "--ignore-out-of-range")
    return Case(args, "error", "field 'classes' holds '3 names'; expected 5 classes, the output channels")


def c_sidecar_classes_shorter_than_num_classes(w: Workspace, e: dict[str, Path]) -> Case:
    onnx = _copy(w, e["baked"], "exp")
    _edit_sidecar(onnx, classes=["road", "sidewalk"])
    return Case(_predict(onnx, w.frames, w.root / "pred"), "error", "field 'classes' holds '2 names'")


def c_sidecar_from_another_export(w: Workspace, e: dict[str, Path]) -> Case:
    # The baked graph's sidecar beside the raw graph: it would feed [0,1] RGB to a graph that wants it
    # normalised. The graph's own metadata says otherwise, so the pair is refused.
    onnx = _copy(w, e["raw"], "exp")
    shutil.copy(e["baked"] / "model.json", onnx.with_suffix(".json"))
    return Case(_predict(onnx, w.frames, w.root / "pred"), "error",
                "field 'input.normalization_baked' holds True; expected False")  # fmt: skip


def c_sidecar_corrupt_json(w: Workspace, e: dict[str, Path]) -> Case:
    onnx = _copy(w, e["baked"], "exp")
    onnx.with_suffix(".json").write_text('{"format": "stvm_sdk.deploy/1", "classes": [')
    return Case(_eval(onnx, w), "error", "model.json: the sidecar of model.onnx is corrupt (invalid JSON")


def c_sidecar_binary(w: Workspace, e: dict[str, Path]) -> Case:
    onnx = _copy(w, e["baked"], "exp")
    onnx.with_suffix(".json").write_bytes(np.random.default_rng(0).bytes(512) + b"\xff\xfe")
    return Case(_predict(onnx, w.frames, w.root / "pred"), "error", "is corrupt (binary, not JSON)")


def c_sidecar_not_an_object(w: Workspace, e: dict[str, Path]) -> Case:
    onnx = _copy(w, e["baked"], "exp")
    onnx.with_suffix(".json").write_text("[1, 2, 3]")
    return Case(["info", str(onnx), "--json"], "error", "is corrupt (holds [1, 2, 3], not a JSON object)")


# --- a graph without its sidecar ----------------------------------------------------------------------


def c_missing_sidecar_reads_graph_metadata(w: Workspace, e: dict[str, Path]) -> Case:
    import onnxruntime as ort

    onnx = _copy(w, e["raw"], "exp")
    ref = w.root / "pred_with_sidecar"
    from matrix import run_case

    code, _, err, _ = run_case(Case(_predict(onnx, w.frames, ref), "ok"))
    assert code == 0, err
    onnx.with_suffix(".json").unlink()
    out = w.root / "pred"
    # What the graph says when fed [0,1] RGB (as if it normalised): another answer, so the test can tell.
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    first = sorted(w.frames.rglob("*.png"))[0]
    x = np.asarray(Image.open(first).convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 255.0
    mean = np.asarray([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
    std = np.asarray([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
    as_if_baked = sess.run(None, {"image": x})[0].argmax(1)[0]
    normalised = sess.run(None, {"image": (x - mean) / std})[0].argmax(1)[0]
    assert (as_if_baked != normalised).mean() > 0.05  # the normalisation matters for this model

    def check(summary: dict[str, Any]) -> None:
        assert summary["frames"] == 4
        got, want = _maps(out), _maps(ref)
        assert sorted(got) == sorted(want) and len(got) == 4
        assert all(np.array_equal(got[k], want[k]) for k in want), "predictions differ without the sidecar"
        assert len({int(c) for m in got.values() for c in np.unique(m.reshape(-1, 3), axis=0)[:, 0]}) > 1

    return Case(_predict(onnx, w.frames, out), "ok", out=out, check=check)


def c_missing_sidecar_info_from_metadata(w: Workspace, e: dict[str, Path]) -> Case:
    onnx = _copy(w, e["raw"], "exp")
    onnx.with_suffix(".json").unlink()

    def check(info: dict[str, Any]) -> None:
        assert "then (x - mean) / std" in info["input"] and info["std"] == [0.229, 0.224, 0.225]
        assert info["num_classes"] == 5 and info["class_names"][0] == "road" and info["sidecar"] is None
        assert info["contract_from"] == "model.onnx's metadata_props" and info["warning"] is None

    return Case(["info", str(onnx), "--json"], "ok", check=check)


def _no_facts(w: Workspace, e: dict[str, Path]) -> Path:
    onnx = _copy(w, e["raw"], "exp")
    onnx.with_suffix(".json").unlink()
    _strip_metadata(onnx)
    return onnx


UNKNOWN = "whether the input is normalised inside the graph is unknown"


def c_no_sidecar_no_metadata_predict_refused(w: Workspace, e: dict[str, Path]) -> Case:
    return Case(_predict(_no_facts(w, e), w.frames, w.root / "pred"), "error", UNKNOWN)


def c_no_sidecar_no_metadata_eval_refused(w: Workspace, e: dict[str, Path]) -> Case:
    return Case(_eval(_no_facts(w, e), w), "error", UNKNOWN)


def c_no_sidecar_no_metadata_bench_refused(w: Workspace, e: dict[str, Path]) -> Case:
    return Case(_bench(_no_facts(w, e)), "error", UNKNOWN)


def c_no_sidecar_no_metadata_info_warns(w: Workspace, e: dict[str, Path]) -> Case:
    def check(info: dict[str, Any]) -> None:
        assert "normalisation UNKNOWN" in info["input"] and UNKNOWN in info["warning"]
        assert info["num_classes"] == 5  # from the graph's output channels

    return Case(["info", str(_no_facts(w, e)), "--json"], "ok", check=check)


# --- output names -------------------------------------------------------------------------------------


def c_predict_names_never_collide(w: Workspace, e: dict[str, Path]) -> Case:
    frames = w.root / "same_stem"
    frames.mkdir()
    rng = np.random.default_rng(3)
    for ext in ("png", "jpg", "bmp"):
        Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(frames / f"a.{ext}")
    Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(frames / "a_png.png")
    out = w.root / "pred"

    def check(summary: dict[str, Any]) -> None:
        colour = sorted(p.name for p in out.rglob("*_color.png"))
        overlays = list(out.rglob("*_overlay.jpg"))
        assert summary["frames"] == 4 == len(colour) == len(overlays), colour
        assert colour == ["a_bmp_color.png", "a_jpg_color.png", "a_png_2_color.png", "a_png_color.png"]

    return Case(_predict(_copy(w, e["baked"], "exp"), frames, out), "ok", out=out, check=check)


# --- numeric options ----------------------------------------------------------------------------------


def c_bench_threads_negative(w: Workspace, e: dict[str, Path]) -> Case:
    return Case(_bench(_copy(w, e["baked"], "exp"), "--threads", "-1"), "error",
                "--threads must be an integer in [1, 1024], got -1")  # fmt: skip


def c_bench_threads_zero(w: Workspace, e: dict[str, Path]) -> Case:
    return Case(
        _bench(w.model, "--threads", "0"), "error", "--threads must be an integer in [1, 1024], got 0"
    )


def c_bench_warmup_negative(w: Workspace, e: dict[str, Path]) -> Case:
    args = _bench(w.model)
    args[args.index("--warmup") + 1] = "-3"
    return Case(args, "error", "--warmup must be an integer in [0, 1000000], got -3")


def c_bench_batch_too_large_for_shape(w: Workspace, e: dict[str, Path]) -> Case:
    args = _bench(w.model, "--batch", "1024")
    args[args.index("--shape") + 1] = "4096x4096"
    return Case(args, "error", "over the 40,000,000-pixel limit: lower --batch or --shape")


def c_predict_shape_over_the_pixel_limit(w: Workspace, e: dict[str, Path]) -> Case:
    args = [*_predict(_copy(w, e["baked"], "exp"), w.frames, w.root / "pred"), "--shape", "100000x100000"]
    return Case(args, "error", "--shape 100000x100000 is too large: each side must be at most 16384")


def c_eval_size_zero(w: Workspace, e: dict[str, Path]) -> Case:
    return Case([*_eval(w.model, w), "--size", "0x64"], "error", "must have a positive height and width")


def _export(w: Workspace, *extra: str) -> list[str]:
    out = str(w.root / "export")
    return [
        "export",
        str(w.model),
        "--out",
        out,
        "--shape",
        "32x64",
        "--verify-frames",
        "1",
        "--json",
        *extra,
    ]


def c_export_opset_zero(w: Workspace, e: dict[str, Path]) -> Case:
    return Case(_export(w, "--opset", "0"), "error", "--opset must be an integer in [7, ")


def c_export_batch_zero(w: Workspace, e: dict[str, Path]) -> Case:
    return Case(_export(w, "--batch", "0"), "error", "--batch must be an integer in [1, 1024], got 0")


def c_export_calib_frames_zero(w: Workspace, e: dict[str, Path]) -> Case:
    return Case(_export(w, "--calib-frames", "0"), "error", "--calib-frames must be an integer in [1, 10000]")


def c_export_workspace_negative(w: Workspace, e: dict[str, Path]) -> Case:
    return Case(_export(w, "--workspace", "-1"), "error", "--workspace must be an integer in [1, 1048576]")


def c_stream_max_frames_zero(w: Workspace, e: dict[str, Path]) -> Case:
    args = ["stream", "--source", str(w.model), "--input", str(w.frames), "--out", str(w.root / "run"),
            "--max-frames", "0", "--json"]  # fmt: skip
    return Case(args, "error", "--max-frames must be")


# --- healthy exports ----------------------------------------------------------------------------------


def c_healthy_export_states_its_facts_twice(w: Workspace, e: dict[str, Path]) -> Case:
    out = w.root / "export"

    def check(summary: dict[str, Any]) -> None:
        import onnx

        from stvm_sdk.runners.contract import read_sidecar

        graph = out / "model.onnx"
        meta = read_sidecar(graph)  # passes the schema it is read with
        assert meta is not None and meta["input"]["normalization_baked"] is False
        props = {p.key: p.value for p in onnx.load(str(graph), load_external_data=False).metadata_props}
        facts = json.loads(props[GRAPH_KEY])
        assert facts["input"]["normalization_baked"] is False and facts["num_classes"] == 5
        assert facts["mean"] == meta["mean"] and facts["std"] == meta["std"]
        assert facts["classes"] == meta["classes"] and facts["output"]["kind"] == "logits"

    return Case(_export(w, "--no-bake-normalize"), "ok", out=out, check=check)


def c_healthy_raw_graph_scores_like_its_checkpoint(w: Workspace, e: dict[str, Path]) -> Case:
    from matrix import run_case

    code, stdout, err, _ = run_case(Case(_eval(e["checkpoint"], w), "ok"))
    assert code == 0, err
    eager = json.loads(stdout)

    def check(summary: dict[str, Any]) -> None:
        assert summary["backend"] == "ort/fp32" and summary["n_images"] == eager["n_images"] == 4
        assert abs(summary["miou"] - eager["miou"]) < 0.05, (summary["miou"], eager["miou"])
        assert summary["per_class_iou"].keys() == eager["per_class_iou"].keys()

    return Case(_eval(_copy(w, e["raw"], "exp"), w), "ok", check=check)


def c_healthy_bench_of_raw_graph(w: Workspace, e: dict[str, Path]) -> Case:
    def check(summary: dict[str, Any]) -> None:
        rows = summary["rows"]
        assert [(r["backend"], r["precision"]) for r in rows] == [("ort", "fp32")]

    return Case(_bench(_copy(w, e["raw"], "exp"), "--threads", "1"), "ok", check=check)


CaseFn = Callable[[Workspace, dict[str, Path]], Case]
CASES: dict[str, CaseFn] = {name[2:]: fn for name, fn in sorted(globals().items()) if name.startswith("c_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_right_answer_deploy(
    name: str, tmp_path: Path, lraspp_checkpoint: Path, exports: dict[str, Path]
) -> None:
    w = Workspace(tmp_path / "ws", lraspp_checkpoint)
    check_case(CASES[name](w, exports), w)
