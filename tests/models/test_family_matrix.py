"""The family matrix through the real CLI: every model x {info, adapt stvm/tent/adabn, eval, export
fp32/fp16/int8, bench, load back in its library}, with no pickle in any file written.

Models are tiny configs (nothing can be downloaded), random-init then fitted 25 steps on the 4 labelled
64x64 frames so their logits have a trained model's margins and fp16/INT8 are checked at the default
argmax-agreement bar (family_models.fit); adapt runs 1 step of batch 2, export verifies on 2 frames
(unlabelled: the mIoU-drop bar on 2 tiny frames is noise; test_export covers it), bench times 1 call.
One module-scoped fixture per model saves it in its library's form and runs ``stvm adapt`` (STvM)
once; the other cells start from that run. torchvision has no pickle-free format of its own, so its
models come in as the SDK's safetensors (built in torchvision, wrapped, saved).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from family_models import (
    K,
    assert_no_pickle,
    hf_folder,
    smp_folder,
    torchvision_safetensors,
)
from stvm_sdk.cli.app import app
from support import make_frames
from typer.testing import CliRunner

from stvm_sdk.boundary.sniff import file_kind
from stvm_sdk.models import forward_logits, load_model

runner = CliRunner()
FAST = ["--iters", "1", "--batch-size", "2", "--crop", "none", "--seed", "0"]
X = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@dataclass(frozen=True)
class Case:
    family: str
    arch: str
    classifier: str  # the module STvM's metric network copies

    def build(self, root: Path, frames: tuple[Path, Path]) -> Path:
        """The model fitted briefly on ``frames`` and written in its library's own form under ``root``."""
        if self.family == "torchvision":
            return torchvision_safetensors(root, self.arch, fit_on=frames)
        build = smp_folder if self.family == "smp" else hf_folder
        return build(root, self.arch, fit_on=frames)


TV, SMP, HF = "torchvision", "smp", "hf"
CASES = {
    "tv-lraspp": Case(TV, "lraspp_mobilenet_v3_large", "classifier"),
    "tv-deeplabv3": Case(TV, "deeplabv3_mobilenet_v3_large", "classifier"),
    "tv-fcn": Case(TV, "fcn_resnet50", "classifier"),
    "smp-unet": Case(SMP, "Unet", "segmentation_head"),
    "smp-deeplabv3plus": Case(SMP, "DeepLabV3Plus", "segmentation_head"),
    "smp-fpn": Case(SMP, "FPN", "segmentation_head"),
    "hf-segformer": Case(HF, "SegformerForSemanticSegmentation", "model.decode_head.classifier"),
    "hf-upernet": Case(HF, "UperNetForSemanticSegmentation", "model.decode_head.classifier"),
    "hf-dpt": Case(HF, "DPTForSemanticSegmentation", "model.head.head"),
}


def _run(*args: object) -> dict:
    """``stvm <args> --json``: exit 0 and the one JSON object it prints."""
    res = runner.invoke(app, [str(a) for a in args] + ["--json"])
    assert res.exit_code == 0, f"stvm {' '.join(map(str, args))}:\n{res.stderr}\n{res.exception!r}"
    return json.loads(res.stdout)  # type: ignore[no-any-return]


@dataclass
class Bench:
    """One model's workspace: its source, frames and the STvM run every other cell starts from."""

    case: Case
    root: Path
    source: Path
    images: Path
    labels: Path
    run: dict


@pytest.fixture(scope="module", params=list(CASES))
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Bench:
    case = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    images, labels = make_frames(root / "data", n=4, size=(64, 64))
    source = case.build(root / "source", (images, labels))
    run = _run("adapt", "--source", source, "--target", images, "--labels", labels,
               "--out", root / "run-stvm", "--method", "stvm", *FAST)  # fmt: skip
    return Bench(case, root, source, images, labels, run)


def _native_logits(b: Bench, folder: Path) -> torch.Tensor:
    """The adapted model loaded back by its own library (not by the SDK), on X."""
    if b.case.family == "torchvision":
        import torchvision
        from safetensors.torch import load_file

        spec = json.loads((folder / "config.json").read_text())
        net = torchvision.models.get_model(
            spec["arch"], num_classes=spec["num_classes"], weights=None, weights_backbone=None
        )
        net.load_state_dict(load_file(folder / "model.safetensors"))
    elif b.case.family == "smp":
        net = pytest.importorskip("segmentation_models_pytorch").from_pretrained(str(folder))
    else:
        tf = pytest.importorskip("transformers")
        net = getattr(tf, b.case.arch).from_pretrained(str(folder), local_files_only=True)
    with torch.no_grad():
        out = net.eval()(X) if b.case.family != "hf" else net.eval()(pixel_values=X).logits
    out = out["out"] if isinstance(out, dict) else out
    return torch.nn.functional.interpolate(out, size=X.shape[-2:], mode="bilinear", align_corners=False)


def test_info_names_the_family_and_the_classifier(model: Bench) -> None:
    info = _run("info", model.source)
    assert (info["family"], info["arch"], info["classifier"]) == (
        model.case.family,
        model.case.arch,
        model.case.classifier,
    )
    assert info["num_classes"] == K


def test_stvm_adapts_and_loads_back_in_its_library(model: Bench) -> None:
    run = model.run
    assert run["steps"] == 1 and run["miou_before"] is not None and run["miou_after"] is not None
    path = Path(run["model_path"])
    assert file_kind(path) == "safetensors"
    adapted = load_model(path)
    assert (adapted.family, adapted.arch, adapted.classifier) == (
        model.case.family,
        model.case.arch,
        model.case.classifier,
    )
    native = Path(run["native_path"])
    with torch.no_grad():
        sdk = forward_logits(adapted.module.eval(), X)
    torch.testing.assert_close(_native_logits(model, native), sdk, rtol=1e-4, atol=1e-4)
    assert_no_pickle(path.parent)


@pytest.mark.parametrize("method", ["tent", "adabn"])
def test_other_methods_adapt(model: Bench, method: str) -> None:
    out = model.root / f"run-{method}"
    run = _run("adapt", "--source", model.source, "--target", model.images, "--labels", model.labels,
               "--out", out, "--method", method, *FAST)  # fmt: skip
    assert run["method"] == method and run["miou_after"] is not None
    assert file_kind(Path(run["model_path"])) == "safetensors"
    assert_no_pickle(out)


def test_eval_scores_the_adapted_model(model: Bench) -> None:
    res = _run("eval", model.run["model_path"], "--images", model.images, "--labels", model.labels)
    assert abs(res["miou"] - model.run["miou_after"]) < 1e-6


def test_export_fp32_fp16_int8_eval_and_bench(model: Bench) -> None:
    out = model.root / "export"
    res = _run("export", model.run["model_path"], "--fp16", "--int8", "--calib", model.images,
               "--shape", "64x64", "--verify-frames", "2", "--calib-frames", "2", "--out", out)  # fmt: skip
    arts = {a["precision"]: a for a in res["artifacts"]}
    assert set(arts) >= {"fp32", "fp16", "int8"}, res
    for art in arts.values():
        assert art["verification"]["passed"], art
    onnx = out / "model.onnx"
    assert file_kind(onnx) == "onnx"
    scored = _run("eval", onnx, "--images", model.images, "--labels", model.labels)
    assert abs(scored["miou"] - model.run["miou_after"]) < 0.5  # mIoU in %: the fp32 graph is the model
    bench = _run("bench", model.run["model_path"], onnx, "--backend", "torch,ort", "--shape", "64x64",
                 "--warmup", "0", "--iters", "1", "--threads", "1", "--no-edge")  # fmt: skip
    timed = {(r["backend"], r["model"]) for r in bench["rows"] if r["mean_ms"] > 0}
    assert {("torch", "model.safetensors"), ("ort", "model.onnx")} <= timed, bench
    assert_no_pickle(out)
    assert_no_pickle(model.root)  # everything this model's cells wrote, source included
