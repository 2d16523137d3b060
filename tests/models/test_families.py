"""Model families: each library's own save loads, names its real classifier, round-trips through the
SDK's safetensors and back into the library, pickle-free; a short adapt() runs on each.

Every model is built with random weights from a tiny config (nothing can be downloaded here).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from family_models import NAMES, SMP_TINY, K, hf_configs, hf_folder

from stvm_sdk import AdaptConfig, adapt
from stvm_sdk.boundary.sniff import file_kind
from stvm_sdk.errors import ModelLoadError
from stvm_sdk.methods.parts.metric import MetricHead
from stvm_sdk.models import capture_features, forward_logits, load_model, save_model, save_native
from stvm_sdk.models.contract import get_submodule
from stvm_sdk.models.io import SegModel

TINY = {
    "run.iters": 2,
    "methods.stvm.metric.warmup": 1,
    "data.batch_size": 2,
    "data.crop": [32, 64],
    "run.log_every": 1,
    "run.checkpoint_every": 2,
    "methods.stvm.mix.patch": 8,
}
X = torch.rand(2, 3, 64, 128)


def _no_pickle_in(folder: Path) -> None:
    """No file of a written model is a pickle or a torch.save archive (which holds one)."""
    for f in folder.rglob("*"):
        if f.is_file():
            assert file_kind(f) not in ("pickle", "torch_zip", "torch_legacy"), f


def _logits(seg: SegModel, x: torch.Tensor = X) -> torch.Tensor:
    with torch.no_grad():
        return forward_logits(seg.module.eval(), x)


def _metric_head_works(seg: SegModel) -> None:
    """STvM's metric network builds on the classifier and embeds its captured input."""
    head = get_submodule(seg.module, str(seg.classifier))
    metric = MetricHead(head, seg.num_classes, dim=16)
    with torch.no_grad(), capture_features(seg.module.eval(), str(seg.classifier)) as hook:
        forward_logits(seg.module, X)
        z = metric(hook.pop())
    assert z.dim() == 4 and z.shape[:2] == (2, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones_like(z[:, 0]))


def _round_trip(seg: SegModel, tmp: Path) -> SegModel:
    """save_model -> safetensors -> load_model gives the same family, metadata and outputs."""
    path = save_model(seg, tmp / "sdk" / "model.safetensors")
    assert file_kind(path) == "safetensors"
    back = load_model(path)
    assert (back.kind, back.family, back.arch, back.classifier) == (
        "safetensors",
        seg.family,
        seg.arch,
        seg.classifier,
    )
    assert (back.mean, back.std, back.class_names) == (seg.mean, seg.std, seg.class_names)
    torch.testing.assert_close(_logits(back), _logits(seg))
    return back


def _adapt_smoke(source: Path | SegModel, frames: tuple[Path, Path], tmp: Path, family: str) -> Path:
    result = adapt(
        source, frames[0], config=AdaptConfig().with_overrides(TINY), out_dir=tmp / "run", progress=False
    )
    run = result.run_dir
    assert result.model_path == run / "model.safetensors" and result.model_path.is_file()
    assert result.metrics["native_path"] == str(run / family)
    _no_pickle_in(run / family)
    for role in ("model", "teacher", "student"):
        assert file_kind(run / f"{role}.safetensors") == "safetensors"
    torch.testing.assert_close(_logits(load_model(result.model_path)), _logits(result.model))
    return run / family


# --- torchvision ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tv_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from stvm_sdk.models import build_torchvision

    torch.manual_seed(0)
    net = build_torchvision("lraspp_mobilenet_v3_large", K)
    path = tmp_path_factory.mktemp("tv") / "lraspp.pt"
    torch.save({"arch": "lraspp_mobilenet_v3_large", "num_classes": K, "state_dict": net.state_dict()}, path)
    return path


def _torchvision_load(folder: Path, seg: SegModel) -> torch.nn.Module:
    import torchvision
    from safetensors.torch import load_file

    spec = json.loads((folder / "config.json").read_text())
    net = torchvision.models.get_model(
        spec["arch"], num_classes=spec["num_classes"], weights=None, weights_backbone=None
    )
    net.load_state_dict(load_file(folder / "model.safetensors"))
    return net.eval()


def test_torchvision_classifier_is_the_classifier_head(tv_checkpoint: Path) -> None:
    seg = load_model(tv_checkpoint)
    assert (seg.family, seg.classifier) == ("torchvision", "classifier")
    _metric_head_works(seg)


def test_torchvision_round_trips_and_loads_back_in_torchvision(tv_checkpoint: Path, tmp_path: Path) -> None:
    seg = load_model(tv_checkpoint)
    _round_trip(seg, tmp_path)
    folder = save_native(seg, tmp_path / "torchvision")
    _no_pickle_in(folder)
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(_torchvision_load(folder, seg), X), _logits(seg))


def test_torchvision_adapts(tv_checkpoint: Path, frames: tuple[Path, Path], tmp_path: Path) -> None:
    folder = _adapt_smoke(tv_checkpoint, frames, tmp_path, "torchvision")
    adapted = load_model(tmp_path / "run" / "model.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(forward_logits(_torchvision_load(folder, adapted), X), _logits(adapted))


# --- segmentation_models_pytorch --------------------------------------------------------------------


@pytest.fixture(scope="module")
def smp_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    model = smp.Unet(encoder_weights=None, classes=K, **SMP_TINY)
    folder = tmp_path_factory.mktemp("smp") / "unet"
    model.save_pretrained(str(folder))
    return folder


def test_smp_classifier_is_the_segmentation_head(smp_folder: Path) -> None:
    seg = load_model(smp_folder)
    assert (seg.family, seg.arch, seg.kind, seg.classifier) == ("smp", "Unet", "folder", "segmentation_head")
    _metric_head_works(seg)


def test_smp_checkpoint_dict_records_arch_encoder_and_kwargs(tmp_path: Path) -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    kwargs = {"decoder_channels": 32, "encoder_output_stride": 16}
    model = smp.create_model(
        "DeepLabV3Plus", "mobilenet_v2", encoder_weights=None, classes=K, **kwargs
    ).eval()
    ckpt = {"arch": "DeepLabV3Plus", "encoder_name": "mobilenet_v2", "kwargs": kwargs, "num_classes": K,
            "state_dict": model.state_dict()}  # fmt: skip
    torch.save(ckpt, tmp_path / "deeplab.pt")
    seg = load_model(tmp_path / "deeplab.pt")
    assert (seg.family, seg.arch, seg.classifier) == ("smp", "DeepLabV3Plus", "segmentation_head")
    assert isinstance(seg.module.segmentation_head[1], torch.nn.Upsample)  # upsampling inside the head
    _metric_head_works(seg)
    with torch.no_grad():
        torch.testing.assert_close(_logits(seg), model(X))
    _round_trip(seg, tmp_path)


def test_smp_round_trips_and_loads_back_in_smp(smp_folder: Path, tmp_path: Path) -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    seg = load_model(smp_folder)
    _round_trip(seg, tmp_path)
    folder = save_native(seg, tmp_path / "smp")
    _no_pickle_in(folder)
    with torch.no_grad():
        torch.testing.assert_close(smp.from_pretrained(str(folder)).eval()(X), _logits(seg))


def test_smp_adapts(smp_folder: Path, frames: tuple[Path, Path], tmp_path: Path) -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    folder = _adapt_smoke(smp_folder, frames, tmp_path, "smp")
    adapted = load_model(tmp_path / "run" / "model.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(smp.from_pretrained(str(folder)).eval()(X), _logits(adapted))


# --- Hugging Face transformers ----------------------------------------------------------------------


HF_CLASSIFIERS = {
    "SegformerForSemanticSegmentation": "model.decode_head.classifier",
    "UperNetForSemanticSegmentation": "model.decode_head.classifier",
    "DPTForSemanticSegmentation": "model.head.head",
    "BeitForSemanticSegmentation": "model.decode_head.classifier",
    "MobileViTV2ForSemanticSegmentation": "model.segmentation_head.classifier",
}


def _hf_native(folder: Path, arch: str, x: torch.Tensor = X) -> torch.Tensor:
    """The logits ``transformers`` itself gives for ``x`` from the folder (resized as the SDK does)."""
    tf = pytest.importorskip("transformers")
    model = getattr(tf, arch).from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        kw = {"interpolate_pos_encoding": True} if arch.startswith("Beit") else {}
        logits = model(pixel_values=x, **kw).logits
    return torch.nn.functional.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.mark.parametrize("arch", list(HF_CLASSIFIERS))
def test_hf_classifier_is_the_real_head(arch: str, tmp_path: Path) -> None:
    seg = load_model(hf_folder(tmp_path, arch))
    assert (seg.family, seg.arch, seg.kind, seg.classifier) == ("hf", arch, "folder", HF_CLASSIFIERS[arch])
    assert seg.class_names == NAMES
    _metric_head_works(seg)


@pytest.mark.parametrize("arch", list(HF_CLASSIFIERS))
def test_hf_round_trips_and_loads_back_in_transformers(arch: str, tmp_path: Path) -> None:
    source = hf_folder(tmp_path, arch)
    seg = load_model(source)
    square = torch.rand(2, 3, 64, 64)  # DPT's own forward takes square inputs only (the SDK's any)
    torch.testing.assert_close(_logits(seg, square), _hf_native(source, arch, square))
    assert _logits(seg).shape == (2, K, 64, 128)
    _round_trip(seg, tmp_path)
    folder = save_native(seg, tmp_path / "hf")
    _no_pickle_in(folder)
    torch.testing.assert_close(_hf_native(folder, arch, square), _logits(seg, square))
    assert json.loads((folder / "config.json").read_text())["id2label"]["1"] == "car"


def test_hf_normalisation_comes_from_the_preprocessor_config(tmp_path: Path) -> None:
    pre = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "do_normalize": True}
    seg = load_model(hf_folder(tmp_path, "SegformerForSemanticSegmentation", preprocessor=pre))
    assert (seg.mean, seg.std) == ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    plain = load_model(hf_folder(tmp_path / "plain", "SegformerForSemanticSegmentation"))
    assert plain.mean == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("arch", ["SegformerForSemanticSegmentation", "UperNetForSemanticSegmentation"])
def test_hf_adapts(arch: str, frames: tuple[Path, Path], tmp_path: Path) -> None:
    source = hf_folder(tmp_path, arch)
    folder = _adapt_smoke(source, frames, tmp_path, "hf")
    adapted = load_model(tmp_path / "run" / "model.safetensors")
    square = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(_hf_native(folder, arch, square), _logits(adapted, square))
    assert not torch.equal(_logits(adapted, square), _hf_native(source, arch, square))  # it did adapt


def test_hf_class_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(
        ModelLoadError, match="BertModel; the SDK reads the semantic-segmentation classes Segformer"
    ):
        load_model(folder)


def test_hf_pickled_weights_are_not_read(tmp_path: Path) -> None:
    folder = hf_folder(tmp_path, "SegformerForSemanticSegmentation")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load_model(folder)


def test_a_missing_library_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = hf_folder(tmp_path, "SegformerForSemanticSegmentation")
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(ModelLoadError, match=r"this is a Hugging Face model.*pip install 'stvm_sdk\[hf\]'"):
        load_model(folder)


def test_a_folder_of_no_known_library_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    with pytest.raises(ModelLoadError, match="not a model folder the SDK reads"):
        load_model(tmp_path / "x")


def test_a_model_without_family_is_not_written_as_safetensors(
    tiny_net: torch.nn.Module, tmp_path: Path
) -> None:
    from stvm_sdk.models import from_module

    with pytest.raises(ModelLoadError, match="only a model of a known family"):
        save_model(from_module(tiny_net), tmp_path / "m.safetensors")


def test_plain_safetensors_without_our_metadata_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelLoadError, match="without the SDK's metadata"):
        load_model(tmp_path / "w.safetensors")


def test_an_in_memory_library_model_is_recognised(tmp_path: Path) -> None:
    """adapt(nn.Module) of a library's model keeps its family: safetensors out, no pickle."""
    import torchvision

    from stvm_sdk.inputs import as_segmodel

    tv = as_segmodel(
        torchvision.models.get_model("fcn_resnet50", num_classes=K, weights=None, weights_backbone=None)
    )
    assert (tv.family, tv.arch, tv.classifier, tv.config) == (
        "torchvision",
        "fcn_resnet50",
        "classifier",
        {"aux_loss": False},
    )
    tf = pytest.importorskip("transformers")
    seg = as_segmodel(tf.SegformerForSemanticSegmentation(hf_configs()["SegformerForSemanticSegmentation"]()))
    assert (seg.family, seg.classifier) == ("hf", HF_CLASSIFIERS["SegformerForSemanticSegmentation"])
    smp = pytest.importorskip("segmentation_models_pytorch")
    un = as_segmodel(smp.Unet(encoder_weights=None, classes=K, **SMP_TINY))
    assert (un.family, un.arch, un.config["encoder_name"]) == ("smp", "Unet", SMP_TINY["encoder_name"])
    assert file_kind(save_model(un, tmp_path / "u.safetensors")) == "safetensors"


def test_a_run_folder_finds_safetensors_models_and_older_runs_pt(tmp_path: Path) -> None:
    from stvm_sdk.rundir import RunDir

    run = RunDir(tmp_path)
    assert run.model_path("student") == tmp_path / "student.safetensors"  # what a new run writes
    (tmp_path / "student.pt").write_bytes(b"x")  # a run from before safetensors, or a pickled module
    assert run.model_path("student") == tmp_path / "student.pt"
    (tmp_path / "student.safetensors").write_bytes(b"x")
    assert run.model_path("student") == tmp_path / "student.safetensors"


@pytest.mark.parametrize("arch", list(HF_CLASSIFIERS))
def test_hf_exports_verified_onnx(arch: str, tmp_path: Path) -> None:
    """Every HF class exports with the defaults: the ones whose pooling or fold needs fixed sizes get a
    static graph at the verification size (and the dynamo exporter at opset 18 where the legacy one
    cannot trace them), said in one log line."""
    import onnx

    from stvm_sdk import ExportOptions, export_model
    from stvm_sdk.export.onnx import graph_opset
    from stvm_sdk.models.families.hf import HuggingFace

    seg = load_model(hf_folder(tmp_path, arch))
    opts = ExportOptions(shape="64x96", verify_frames=2, out_dir=tmp_path / "export")
    said: list[str] = []
    art = export_model(seg, opts, log=said.append).artifacts[-1]
    assert art.onnx_path.is_file() and art.verification.passed
    dims = onnx.load(str(art.onnx_path)).graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value or d.dim_param for d in dims]
    needs = HuggingFace.export_needs(arch)
    if needs is None:
        assert shape == ["batch", 3, "height", "width"]
        assert not any("fixed input size" in line for line in said)
    else:
        assert shape == [1, 3, 64, 96]
        assert any(f"{arch}: {needs.reason}: the graph has a fixed input size 64x96" in x for x in said), said
        assert graph_opset(onnx.load(str(art.onnx_path))) == (needs.opset or 17)


def test_smp_exports_verified_onnx(smp_folder: Path, tmp_path: Path) -> None:
    from stvm_sdk import ExportOptions, export_model

    opts = ExportOptions(shape="64x128", verify_frames=2, out_dir=tmp_path / "export")
    art = export_model(load_model(smp_folder), opts).artifacts[-1]
    assert art.onnx_path.is_file() and art.verification.passed


def test_a_family_missing_a_required_method_is_refused_at_registration() -> None:
    from stvm_sdk.models.families import Family, register_family

    class Half(Family):
        name = "half_family"

        @classmethod
        def build(cls, arch: str, num_classes: int, config: dict) -> torch.nn.Module:
            return torch.nn.Identity()

    with pytest.raises(TypeError, match="does not define classifier, save_native"):
        register_family(Half)
