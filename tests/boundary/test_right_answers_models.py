"""The right-answers matrix for model files: every field the SDK reads from a model file is checked where
it is read, through the Typer runner.

A tampered normalisation, class count, arch or class list is refused in one line that names the file's
field (never a traceback, never a silently wrong score); keyword arguments read from a file reach a
library only from an allow-list (a file never makes smp, timm or transformers open a file outside the
model's folder); and a valid file of each kind still loads, with the values it states. The harness is
in ``tests/matrix.py``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from family_models import NAMES, SMP_TINY, K, hf_folder, smp_folder
from matrix import Case, Workspace, check_case, run_case
from support import TinySegNet

from stvm_sdk.models.families.base import plain_state
from stvm_sdk.models.segmodel import CHECKPOINT_FORMAT, IMAGENET_MEAN, IMAGENET_STD, METADATA_KEY

DROP = object()  # a metadata field to leave out
SEGFORMER = "SegformerForSemanticSegmentation"

# Files opened while a case runs (Python's audit events), to show a file outside the model's folder
# that a tampered model file names is never opened.
_OPENED: list[str] = []
_WATCHING = [False]


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _WATCHING[0] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _info(path: Path) -> list[str]:
    return ["info", str(path), "--json"]


def _eval(w: Workspace, path: Path) -> list[str]:
    return ["eval", str(path), "--images", str(w.frames), "--labels", str(w.labels), "--json"]


def _sdk_safetensors(w: Workspace, name: str, **changes: Any) -> Path:
    """The workspace's model as the SDK's own safetensors, its header metadata changed by ``changes``."""
    from safetensors.torch import save_file

    ckpt = torch.load(w.model, weights_only=True)
    meta: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT, "family": "torchvision", "arch": ckpt["arch"],
        "config": {"aux_loss": False}, "num_classes": ckpt["num_classes"], "classifier": "classifier",
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "class_names": ckpt["class_names"],
    }  # fmt: skip
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v is not DROP}
    path = w.models / name
    save_file(plain_state(ckpt["state_dict"]), str(path), metadata={METADATA_KEY: json.dumps(meta)})
    return path


def _hf(w: Workspace, preprocessor: dict[str, Any] | None = None, **config: Any) -> Path:
    """A tiny Segformer save_pretrained folder; ``config`` changes its config.json (DROP removes)."""
    folder = hf_folder(w.models, SEGFORMER, preprocessor=preprocessor)
    if config:
        data = json.loads((folder / "config.json").read_text())
        data.update(config)
        data = {k: v for k, v in data.items() if v is not DROP}
        (folder / "config.json").write_text(json.dumps(data))
    return folder


def _smp(w: Workspace, **config: Any) -> Path:
    """A tiny smp Unet save_pretrained folder; ``config`` changes its config.json."""
    folder = smp_folder(w.models, "Unet")
    data = json.loads((folder / "config.json").read_text())
    data.update(config)
    (folder / "config.json").write_text(json.dumps(data))
    return folder


def _outside(w: Workspace) -> Path:
    """A real weights file outside the workspace (and any model folder) that a tampered file names."""
    path = w.root.parent / "elsewhere" / "weights.pth"
    path.parent.mkdir(exist_ok=True)
    torch.save({"conv_stem.weight": torch.zeros(1)}, path)
    return path


def _refused(args: list[str], message: str, **extra: Any) -> Case:
    return Case(args, "error", message, extra=extra)


def _states(**expected: Any) -> Callable[[dict[str, Any]], None]:
    def check(info: dict[str, Any]) -> None:
        for key, value in expected.items():
            assert info[key] == value, (key, info[key], value)

    return check


# --- normalisation ------------------------------------------------------------------------------------


def c_std_zeros_in_checkpoint(w: Workspace) -> Case:
    p = w.checkpoint("zeros.pt", std=[0.0, 0.0, 0.0])
    return _refused(_eval(w, p), "field 'std' holds [0.0, 0.0, 0.0]; expected a list of 3 finite numbers > 0")


def c_std_nan_in_safetensors(w: Workspace) -> Case:
    p = _sdk_safetensors(w, "nan.safetensors", std=[float("nan"), 0.224, 0.225])
    return _refused(_eval(w, p), "field 'std' holds [nan, 0.224, 0.225]")


def c_std_negative_in_preprocessor(w: Workspace) -> Case:
    pre = {"image_mean": [0.5, 0.5, 0.5], "image_std": [-0.25, 0.25, 0.25], "do_normalize": True}
    folder = _hf(w, pre)
    return _refused(_info(folder), "preprocessor_config.json: field 'image_std' holds [-0.25, 0.25, 0.25]")


def c_std_wrong_length_in_checkpoint(w: Workspace) -> Case:
    p = w.checkpoint("two.pt", std=[0.2, 0.2])
    return _refused(_info(p), "field 'std' holds [0.2, 0.2]; expected a list of 3 finite numbers")


def c_std_beyond_range_in_safetensors(w: Workspace) -> Case:
    p = _sdk_safetensors(w, "wide.safetensors", std=[1e-9, 0.2, 0.2])
    return _refused(_info(p), "field 'std' holds [1e-09, 0.2, 0.2]")


def c_image_mean_text_in_preprocessor(w: Workspace) -> Case:
    folder = _hf(w, {"image_mean": "abc", "image_std": [0.25, 0.25, 0.25]})
    return _refused(_info(folder), "field 'image_mean' holds 'abc'; expected a list of 3 finite numbers")


def c_image_std_without_mean(w: Workspace) -> Case:
    folder = _hf(w, {"image_std": [0.25, 0.25, 0.25]})
    return _refused(_info(folder), "field 'image_mean' is missing")


def c_preprocessor_not_json(w: Workspace) -> Case:
    folder = _hf(w)
    (folder / "preprocessor_config.json").write_text("{not json")
    return _refused(_info(folder), "preprocessor_config.json: not a JSON file")


def c_torchscript_std_zero(w: Workspace) -> Case:
    p = w.models / "tiny.ts"
    meta = {"num_classes": 5, "std": [0, 0, 0], "mean": [0.5, 0.5, 0.5]}
    torch.jit.save(
        torch.jit.script(TinySegNet().eval()), str(p), _extra_files={"stvm.json": json.dumps(meta)}
    )
    return _refused(_info(p), "(stvm.json): field 'std' holds [0, 0, 0]")


# --- class counts, arch, class names --------------------------------------------------------------------


def c_num_classes_negative(w: Workspace) -> Case:
    p = w.checkpoint("neg.pt", num_classes=-1)
    return _refused(_info(p), "field 'num_classes' holds -1; expected an integer in [1, 65536]")


def c_num_classes_text_in_safetensors(w: Workspace) -> Case:
    p = _sdk_safetensors(w, "abc.safetensors", num_classes="abc")
    return _refused(_info(p), "field 'num_classes' holds 'abc'")


def c_num_classes_huge(w: Workspace) -> Case:
    p = w.checkpoint("huge.pt", num_classes=1e12)
    return _refused(w.adapt(source=p), "field 'num_classes' holds 1000000000000.0")


def c_num_classes_disagrees_with_weights(w: Workspace) -> Case:
    p = w.checkpoint("seven.pt", num_classes=7, class_names=None)
    return _refused(_info(p), "does not fit arch 'lraspp_mobilenet_v3_large' with 7 classes")


def c_arch_missing_in_safetensors(w: Workspace) -> Case:
    p = _sdk_safetensors(w, "noarch.safetensors", arch=DROP)
    return _refused(_info(p), "field 'arch' is missing")


def c_arch_megabyte(w: Workspace) -> Case:
    p = w.checkpoint("long.pt", arch="lraspp_" + "x" * 1_000_000)
    return _refused(_info(p), "field 'arch' holds 'lraspp_xxx", max_line=300)


def c_family_unknown(w: Workspace) -> Case:
    p = w.checkpoint("fam.pt", family="keras" * 1000)
    return _refused(_info(p), "field 'family' holds 'keraskeras", max_line=300)


def c_class_names_shorter_than_outputs(w: Workspace) -> Case:
    p = w.checkpoint("three.pt", class_names=["road", "car", "sky"])
    return _refused(_eval(w, p), "field 'class_names' holds '3 names'; expected a list of 5 names")


def c_state_dict_not_tensors(w: Workspace) -> Case:
    p = w.checkpoint("nostate.pt", state_dict={"classifier.weight": [1, 2, 3]})
    return _refused(_info(p), "field 'state_dict' holds")


def c_torchvision_aux_loss_text(w: Workspace) -> Case:
    p = w.checkpoint("aux.pt", config={"aux_loss": "yes"})
    return _refused(_info(p), "field 'config.aux_loss' holds 'yes'; expected true or false")


def c_hf_id2label_fewer_than_weights(w: Workspace) -> Case:
    labels = {"0": "road", "1": "car", "2": "sky"}
    folder = _hf(w, id2label=labels, label2id={v: int(k) for k, v in labels.items()})
    return _refused(_info(folder), "field 'id2label' holds '3 labels'; expected 5: the classifier")


def c_hf_num_labels_huge(w: Workspace) -> Case:
    folder = _hf(w, num_labels=1e12, id2label=DROP, label2id=DROP)
    return _refused(_info(folder), "config.json: field 'num_labels' holds 1000000000000.0")


def c_hf_id2label_gaps(w: Workspace) -> Case:
    labels = {"0": "road", "1": "car", "2": "tree", "3": "sky", "9": "person"}
    folder = _hf(w, id2label=labels)
    return _refused(_info(folder), "field 'id2label' holds")


def c_hf_architectures_not_a_list(w: Workspace) -> Case:
    folder = _hf(w, architectures=SEGFORMER)
    return _refused(_info(folder), "field 'architectures' holds 'Segformer")


# --- keyword arguments a file passes to a library -----------------------------------------------------


def c_smp_checkpoint_path_outside(w: Workspace) -> Case:
    outside = _outside(w)
    folder = _smp(w, checkpoint_path=str(outside))
    return _refused(_info(folder), "field 'checkpoint_path' is not an argument the SDK passes to smp's Unet",
                    never_opened=outside)  # fmt: skip


def c_smp_pretrained_cfg_overlay(w: Workspace) -> Case:
    outside = _outside(w)
    folder = _smp(w, pretrained_cfg_overlay={"file": str(outside)})
    return _refused(_eval(w, folder), "field 'pretrained_cfg_overlay' is not an argument",
                    never_opened=outside)  # fmt: skip


def c_smp_encoder_from_local_dir(w: Workspace) -> Case:
    outside = _outside(w)
    folder = _smp(w, encoder_name=f"tu-local-dir:{outside.parent}")
    return _refused(_info(folder), "field 'encoder_name' holds 'tu-local-dir:", never_opened=outside.parent)


def c_smp_checkpoint_dict_kwargs(w: Workspace) -> Case:
    smp = pytest.importorskip("segmentation_models_pytorch")
    outside = _outside(w)
    net = smp.create_model("Unet", encoder_weights=None, classes=K, **SMP_TINY)
    ckpt = {"family": "smp", "arch": "Unet", "num_classes": K, "state_dict": net.state_dict(),
            "kwargs": {**SMP_TINY, "checkpoint_path": str(outside)}}  # fmt: skip
    torch.save(ckpt, w.models / "smp.pt")
    return _refused(_info(w.models / "smp.pt"), "field 'kwargs.checkpoint_path' is not an argument",
                    never_opened=outside)  # fmt: skip


def c_smp_decoder_channels_huge(w: Workspace) -> Case:
    folder = _smp(w, decoder_channels=[10**9, 8, 8])
    return _refused(_info(folder), "field 'decoder_channels' holds [1000000000, 8, 8]")


def c_hf_backbone_from_elsewhere(w: Workspace) -> Case:
    outside = _outside(w)
    folder = _hf(w, backbone=str(outside.parent), use_pretrained_backbone=True)
    return _refused(_info(folder), "config.json: field 'backbone' holds", never_opened=outside.parent)


def c_hf_attention_kernel_from_the_hub(w: Workspace) -> Case:
    folder = _hf(w, attn_implementation="kernels-community/flash-attn3")
    return _refused(_info(folder), "field 'attn_implementation' holds 'kernels-community/flash-attn3'")


def c_hf_index_names_a_shard_outside(w: Workspace) -> Case:
    folder = _hf(w)
    outside = _outside(w).with_suffix(".safetensors")  # real weights, outside the model's folder
    outside.write_bytes((folder / "model.safetensors").read_bytes())
    index = {
        "metadata": {},
        "weight_map": {"decode_head.classifier.weight": f"../../../elsewhere/{outside.name}"},
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    message = "model.safetensors.index.json: field 'weight_map' holds '../../../elsewhere"
    return _refused(_info(folder), message, never_opened=outside)


# --- valid files of each kind -------------------------------------------------------------------------


def c_ok_checkpoint(w: Workspace) -> Case:
    names = ["road", "sidewalk", "building", "vegetation", "sky"]
    expected = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return Case(_info(w.model), "ok", check=_states(family="torchvision", num_classes=5, class_names=names,
                                                    **expected))  # fmt: skip


def c_ok_sdk_safetensors_scores_as_the_checkpoint(w: Workspace) -> Case:
    p = _sdk_safetensors(w, "good.safetensors")

    def check(summary: dict[str, Any]) -> None:
        from stvm_sdk.eval import evaluate
        from stvm_sdk.models import load_model

        assert summary["n_images"] == 4, summary
        assert summary["miou"] == pytest.approx(evaluate(load_model(w.model), w.frames, w.labels).miou)

    return Case(_eval(w, p), "ok", check=check)


def c_ok_hf_preprocessor(w: Workspace) -> Case:
    folder = _hf(w, {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "do_normalize": True})
    return Case(_info(folder), "ok", check=_states(
        family="hf", num_classes=K, class_names=NAMES, mean=[0.5] * 3, std=[0.25] * 3,
    ))  # fmt: skip


def c_ok_hf_one_number_for_all_channels(w: Workspace) -> Case:
    folder = _hf(w, {"image_mean": 0.5, "image_std": 0.5})
    return Case(_info(folder), "ok", check=_states(mean=[0.5] * 3, std=[0.5] * 3))


def c_ok_hf_no_normalisation(w: Workspace) -> Case:
    folder = _hf(w, {"do_normalize": False, "image_mean": [9, 9, 9], "image_std": [0, 0, 0]})
    return Case(_info(folder), "ok", check=_states(mean=[0.0] * 3, std=[1.0] * 3))


def c_ok_smp_folder(w: Workspace) -> Case:
    return Case(_info(_smp(w)), "ok", check=_states(family="smp", arch="Unet", num_classes=K))


def c_ok_torchscript_with_metadata(w: Workspace) -> Case:
    p = w.models / "tiny.ts"
    meta = {"num_classes": 5, "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2], "class_names": NAMES}
    torch.jit.save(
        torch.jit.script(TinySegNet().eval()), str(p), _extra_files={"stvm.json": json.dumps(meta)}
    )
    return Case(
        _info(p), "ok", check=_states(num_classes=5, mean=[0.5] * 3, std=[0.2] * 3, class_names=NAMES)
    )


CASES = {name[2:]: fn for name, fn in sorted(globals().items()) if name.startswith("c_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_right_answer(name: str, tmp_path: Path, lraspp_checkpoint: Path) -> None:
    w = Workspace(tmp_path / "ws", lraspp_checkpoint)
    case = CASES[name](w)
    _OPENED.clear()
    _WATCHING[0] = True
    try:
        check_case(case, w)
    finally:
        _WATCHING[0] = False
    never = case.extra.get("never_opened")
    if never is not None:
        assert not [p for p in _OPENED if p.startswith(str(never))], _OPENED
    if "max_line" in case.extra:  # the error line quotes the bad value short
        _, _, err, _ = run_case(case)
        assert len(err.strip()) < case.extra["max_line"], len(err)
