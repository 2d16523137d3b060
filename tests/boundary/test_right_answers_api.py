"""Right answers at the config, size and memory boundary, through the CLI and the Python API.

The CLI matrix uses the harness of ``tests/matrix.py`` (one ``error:`` line or one JSON object, and no
file changed outside the command's output folder); its cases assert the right answer: a config file
that is not text, not TOML/YAML/JSON or holds a non-finite number is one line naming the file or the
key; a batch, crop, size or buffer too large is refused before anything is allocated, with the limit;
running out of memory (injected into a method's step) is one line naming the option to lower.

The plain tests below check that the public Python API raises the same :class:`StvmError` classes,
which are also ``TypeError`` / ``ValueError`` / ``MemoryError`` where Python code expects those.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matrix import Case, Workspace, check_case
from PIL import Image

from stvm_sdk.boundary.args import COUNT_LIMITS, MAX_BATCH_PIXELS, MAX_SIDE
from stvm_sdk.errors import (
    ArgumentTypeError,
    ConfigError,
    ResourceError,
    StvmError,
    is_out_of_memory,
    out_of_memory,
)
from stvm_sdk.methods.base import Method

CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"
)


class OutOfMemoryError(RuntimeError):
    """Named as ``torch.cuda.OutOfMemoryError`` is (a RuntimeError), without needing a GPU."""


def _config(w: Workspace, name: str, data: bytes, *extra: str) -> list[str]:
    return w.adapt("--config", w.file(name, data), *extra)


def _no_run(w: Workspace) -> dict[str, Any]:
    return {"no_run": w.root / "run"}  # refused before the run folder (or any tensor) exists


# --- config files -----------------------------------------------------------------------------------


def c_config_binary_toml(w: Workspace) -> Case:
    data = np.random.default_rng(1).bytes(400)
    return Case(_config(w, "bin.toml", b"\xb6" + data), "error", "bin.toml: not a text file")


def c_config_binary_json(w: Workspace) -> Case:
    data = b"\xff\xfe\x00" + np.random.default_rng(2).bytes(400)
    return Case(_config(w, "bin.json", data), "error", "bin.json: not a text file")


def c_config_nul_bytes(w: Workspace) -> Case:
    return Case(_config(w, "nul.toml", b"[optim]\x00\x00\n"), "error", "nul.toml: not a text file")


def c_config_not_toml(w: Workspace) -> Case:
    return Case(_config(w, "bad.toml", b"[optim]\nlr = = 3\n"), "error", "bad.toml: not valid TOML")


def c_config_not_json(w: Workspace) -> Case:
    return Case(_config(w, "bad.json", b'{"optim": {"lr": '), "error", "bad.json: not valid JSON")


def c_config_not_yaml_is_one_line(w: Workspace) -> Case:
    # PyYAML's message spans several lines: the error is still one line.
    return Case(_config(w, "bad.yaml", b"optim:\n  lr: [1, 2\nrun: {\n"), "error", "bad.yaml: not valid YAML")


def c_config_too_large(w: Workspace) -> Case:
    data = b"# " + b"x" * (2 << 20) + b"\n"
    return Case(_config(w, "huge.toml", data), "error", "huge.toml is 2,097,155 bytes, over the")


def c_config_yaml_alias_bomb(w: Workspace) -> Case:
    keys = "qrstuvwxyz"
    lines = ["a0: &a0 {" + ", ".join(f"{k}: 1" for k in keys) + "}"]
    lines += [f"a{i}: &a{i} {{" + ", ".join(f"{k}: *a{i - 1}" for k in keys) + "}" for i in range(1, 9)]
    args = _config(w, "bomb.yaml", "\n".join(lines).encode())
    return Case(args, "error", "bomb.yaml holds more than 100,000 values (with YAML aliases expanded)")


def c_config_json_nested_deep(w: Workspace) -> Case:
    args = _config(w, "deep.json", b'{"a":' * 500 + b"1" + b"}" * 500)
    return Case(args, "error", "deep.json is nested more than 16 levels deep")


def c_config_wrong_type_names_file_and_key(w: Workspace) -> Case:
    args = _config(w, "typed.toml", b'[data]\nbatch_size = "4"\n')
    return Case(args, "error", "typed.toml: config key 'data.batch_size' must be int, got '4'")


def c_stream_config_binary(w: Workspace) -> Case:
    cfg = w.file("s.toml", b"\x80\x81" + np.random.default_rng(3).bytes(100))
    args = ["stream", "--source", str(w.model), "--input", str(w.frames), "--out", str(w.root / "s"),
            "--config", str(cfg), "--json"]  # fmt: skip
    return Case(args, "error", "s.toml: not a text file (byte 0 is not UTF-8)")


def c_config_method_lr_inf(w: Workspace) -> Case:
    args = _config(w, "tent.toml", b"method = 'tent'\n[methods.tent]\nlr = inf\n")
    return Case(
        args, "error", "config key 'methods.tent.lr' must be a finite number, got inf", extra=_no_run(w)
    )


def c_config_lr_nan(w: Workspace) -> Case:
    args = _config(w, "nan.toml", b"[optim]\nlr = nan\n")
    return Case(args, "error", "nan.toml: config key 'optim.lr' must be a finite number, got nan")


def c_config_json_infinity(w: Workspace) -> Case:
    args = _config(w, "inf.json", b'{"optim": {"momentum": -Infinity}}')
    return Case(args, "error", "config key 'optim.momentum' must be a finite number, got -inf")


def c_config_yaml_inf(w: Workspace) -> Case:
    args = _config(w, "inf.yaml", b"method: stvm\nmethods:\n  stvm:\n    mix:\n      tau: .inf\n")
    return Case(args, "error", "config key 'methods.stvm.mix.tau' must be a finite number")


def c_override_int_beyond_64_bits(w: Workspace) -> Case:
    args = w.adapt("run.seed=" + "9" * 30)
    return Case(args, "error", "config key 'run.seed' must be an integer that fits in 64 bits")


def c_override_nan(w: Workspace) -> Case:
    return Case(w.adapt("optim.lr=NaN"), "error", "config key 'optim.lr' must be a finite number, got nan")


def c_config_good_json_with_bom(w: Workspace) -> Case:
    """A valid config (a UTF-8 BOM, as some editors write) is read and its values used."""
    data = "\ufeff" + json.dumps({"optim": {"lr": 1e-4}, "methods": {"stvm": {"mix": {"tau": 0.6}}}})
    args = _config(w, "good.json", data.encode())

    def check(summary: dict[str, Any]) -> None:
        cfg = json.loads((Path(summary["run_dir"]) / "config.json").read_text())
        assert cfg["optim"]["lr"] == 1e-4 and cfg["methods"]["stvm"]["mix"]["tau"] == 0.6, cfg

    return Case(args, "ok", out=w.root / "run", check=check)


# --- sizes, refused before allocation ---------------------------------------------------------------


def _set(args: list[str], flag: str, value: str) -> list[str]:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def c_batch_size_huge(w: Workspace) -> Case:
    args = _set(w.adapt(), "--batch-size", "10000000")
    limit = f"{COUNT_LIMITS['batch_size']:,}"
    return Case(args, "error", f"--batch-size is 10,000,000: at most {limit}", extra=_no_run(w))


def c_batch_size_override_huge(w: Workspace) -> Case:
    return Case(w.adapt("data.batch_size=10000000"), "error", "config key 'data.batch_size' is 10,000,000")


def c_crop_huge(w: Workspace) -> Case:
    args = _set(w.adapt(), "--crop", "100000x100000")
    return Case(args, "error", f"--crop 100000x100000 is too large: each side must be at most {MAX_SIDE}")


def c_resize_huge(w: Workspace) -> Case:
    return Case(w.adapt("--resize", "64x99999"), "error", "--resize 64x99999 is too large")


def c_batch_times_crop_over_limit(w: Workspace) -> Case:
    args = _set(_set(w.adapt(), "--batch-size", "4096"), "--crop", "16384x16384")
    return Case(args, "error", f"pixels per step, over the limit of {MAX_BATCH_PIXELS:,}", extra=_no_run(w))


def c_batch_of_whole_frames_over_limit(w: Workspace) -> Case:
    """No crop: the batch is the largest frame, known once the frames are scanned (before a batch)."""
    args = _set(_set(w.adapt(), "--crop", "none"), "--batch-size", "4096")
    Image.new("RGB", (6000, 6000)).save(w.frames / "big.png")
    return Case(args, "error", "--batch-size x the largest frame", extra=_no_run(w))


def c_stream_size_huge(w: Workspace) -> Case:
    args = ["stream", "--source", str(w.model), "--input", str(w.frames), "--out", str(w.root / "s"),
            "--size", "100000x100000", "--json"]  # fmt: skip
    return Case(args, "error", f"--size 100000x100000 is too large: each side must be at most {MAX_SIDE}")


def c_stream_buffer_huge(w: Workspace) -> Case:
    args = ["stream", "--source", str(w.model), "--input", str(w.frames), "--out", str(w.root / "s"),
            "--buffer", "10000000", "--json"]  # fmt: skip
    return Case(args, "error", f"--buffer is 10,000,000: at most {COUNT_LIMITS['buffer']:,}")


def _train(w: Workspace) -> list[str]:
    return ["train-source", "--images", str(w.frames), "--labels", str(w.labels), "--out",
            str(w.root / "t.pt"), "--num-classes", "5", "--iters", "1", "--json"]  # fmt: skip


def c_train_source_batch_huge(w: Workspace) -> Case:
    args = [*_train(w), "--batch-size", "10000000"]
    return Case(args, "error", "--batch-size (TrainConfig.batch_size) is 10,000,000")


def c_train_source_crop_huge(w: Workspace) -> Case:
    args = [*_train(w), "--crop", "100000x100000"]
    return Case(args, "error", "--crop 100000x100000 is too large")


# --- out of memory during a run (a method's step fails as the allocator does) -------------------------


def c_cpu_oom_in_step(w: Workspace) -> Case:
    line = (
        "out of memory (DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)): "
        "lower --batch-size (data.batch_size, now 2) or --crop (data.crop, now 32x64)"
    )
    return Case(w.adapt(), "error", line, out=w.root / "run", extra={"fault": RuntimeError(CPU_OOM)})


def c_cuda_oom_in_step(w: Workspace) -> Case:
    fault = OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)")
    line = (
        "out of GPU memory (CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.1 GiB total)): "
        "lower --batch-size"
    )
    return Case(w.adapt(), "error", line, out=w.root / "run", extra={"fault": fault})


def c_memory_error_in_step(w: Workspace) -> Case:
    return Case(w.adapt(), "error", "out of memory: lower --batch-size", out=w.root / "run",
                extra={"fault": MemoryError()})  # fmt: skip


def c_stream_oom_names_stream_knobs(w: Workspace) -> Case:
    out = w.root / "s"
    args = ["stream", "--source", str(w.model), "--input", str(w.frames), "--out", str(out),
            "--batch-size", "2", "--buffer", "4", "--json"]  # fmt: skip
    return Case(args, "error", "lower --batch-size (now 2) or --buffer (now 4) or --size", out=out,
                extra={"fault": RuntimeError(CPU_OOM)})  # fmt: skip


CASES = {name[2:]: fn for name, fn in sorted(globals().items()) if name.startswith("c_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_right_answer(
    name: str, tmp_path: Path, lraspp_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = Workspace(tmp_path / "ws", lraspp_checkpoint)
    case = CASES[name](w)
    fault = case.extra.pop("fault", None)
    if fault is not None:

        def failing_step(self: Method, *args: Any, **kwargs: Any) -> Any:
            raise fault

        monkeypatch.setattr(Method, "step", failing_step)
    no_run = case.extra.pop("no_run", None)
    check_case(case, w)
    assert no_run is None or not no_run.exists(), "a run folder was made before the refusal"


# --- the Python API -----------------------------------------------------------------------------------


@pytest.fixture
def model() -> torch.nn.Module:
    from support import TinySegNet

    return TinySegNet(num_classes=5)


def _adapt(*args: Any, **kwargs: Any) -> Any:
    from stvm_sdk import adapt

    return adapt(*args, **kwargs)


API_TYPE_ERRORS: dict[str, tuple[Callable[[Any, Path], tuple[tuple[Any, ...], dict[str, Any]]], str]] = {
    "tensor_as_model": (lambda m, d: ((torch.zeros(3), d), {}), "source_model must be an nn.Module"),
    "dict_as_model": (lambda m, d: (({"state_dict": {}}, d), {}), "source_model must be an nn.Module"),
    "int_as_target": (lambda m, d: ((m, 123), {}), "target_dir must be a path (str or os.PathLike), got int"),
    "bytes_as_target": (lambda m, d: ((m, b"frames"), {}), "target_dir must be a path"),
    "int_as_config": (lambda m, d: ((m, d), {"config": 42}), "config must be an AdaptConfig, a dict"),
    "string_as_resume": (lambda m, d: ((m, d), {"resume": "no"}), "resume must be True or False, got str"),
    "float_num_classes": (lambda m, d: ((m, d), {"num_classes": 5.0}), "num_classes must be an integer"),
    "int_classifier": (lambda m, d: ((m, d), {"classifier": 3}), "classifier must be a module path"),
    "on_log_not_callable": (lambda m, d: ((m, d), {"on_log": "print"}), "on_log must be a function"),
    "list_as_labels": (lambda m, d: ((m, d), {"labels_dir": ["a"]}), "labels_dir must be a path"),
    "string_batch_size": (
        lambda m, d: ((m, d), {"config": {"data": {"batch_size": "4"}}}),
        "config key 'data.batch_size' must be int, got '4'",
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(API_TYPE_ERRORS))
def test_api_wrong_type_is_a_type_error(name: str, model: torch.nn.Module, frames: tuple[Path, Path]) -> None:
    make, phrase = API_TYPE_ERRORS[name]
    args, kwargs = make(model, frames[0])
    with pytest.raises(ArgumentTypeError) as err:
        _adapt(*args, **kwargs)
    assert isinstance(err.value, TypeError) and isinstance(err.value, StvmError)
    assert phrase in str(err.value) and "\n" not in str(err.value), str(err.value)


API_VALUE_ERRORS: dict[str, tuple[Callable[[Any, Path], tuple[tuple[Any, ...], dict[str, Any]]], str]] = {
    "inf_lr_dict": (
        lambda m, d: ((m, d), {"config": {"optim": {"lr": float("inf")}}}),
        "config key 'optim.lr' must be a finite number, got inf",
    ),  # fmt: skip
    "nan_method_option": (
        lambda m, d: ((m, d), {"config": {"method": "tent", "methods": {"tent": {"lr": float("nan")}}}}),
        "config key 'methods.tent.lr' must be a finite number, got nan",
    ),
    "empty_target": (lambda m, d: ((m, ""), {}), "target_dir is an empty path"),
    "nul_in_target": (lambda m, d: ((m, "fr\x00mes"), {}), "target_dir contains a NUL character"),
    "zero_num_classes": (lambda m, d: ((m, d), {"num_classes": 0}), "num_classes must be an integer in [1,"),
    "missing_config_file": (lambda m, d: ((m, d), {"config": d / "nope.toml"}), "config file not found"),
    "huge_batch_dict": (
        lambda m, d: ((m, d), {"config": {"data": {"batch_size": 10**7}}}),
        "config key 'data.batch_size' is 10,000,000",
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(API_VALUE_ERRORS))
def test_api_wrong_value_is_a_value_error(
    name: str, model: torch.nn.Module, frames: tuple[Path, Path]
) -> None:
    make, phrase = API_VALUE_ERRORS[name]
    args, kwargs = make(model, frames[0])
    with pytest.raises(ConfigError) as err:
        _adapt(*args, **kwargs)
    assert isinstance(err.value, ValueError) and isinstance(err.value, StvmError)
    assert phrase in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_config_dataclasses_built_in_python_are_checked() -> None:
    from stvm_sdk.config import AdaptConfig, DataConfig, OptimConfig, RunConfig

    with pytest.raises(ConfigError, match=r"config key 'optim.lr' must be a finite number, got inf"):
        OptimConfig(lr=float("inf"))
    with pytest.raises(ConfigError, match="must be a finite number, got nan"):
        OptimConfig(momentum=math.nan)
    with pytest.raises(ArgumentTypeError, match=r"config key 'data.batch_size' must be int, got '4'"):
        DataConfig(batch_size="4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=f"each side must be at most {MAX_SIDE}"):
        DataConfig(crop=(100_000, 100_000))
    with pytest.raises(ConfigError, match="pixels per step, over the limit"):
        DataConfig(batch_size=4096, crop=(16_384, 16_384))
    with pytest.raises(ConfigError, match=f"each side must be at most {MAX_SIDE}"):
        RunConfig(eval_size=(64, 10**6))
    assert DataConfig(crop=[64, 128]).crop == (64, 128)  # type: ignore[arg-type]  # a list is a tuple
    assert OptimConfig(lr=1).lr == 1.0 and isinstance(OptimConfig(lr=1).lr, float)
    with pytest.raises(ArgumentTypeError, match="config key 'data' must be a mapping|section 'data'"):
        AdaptConfig(data=3)  # type: ignore[arg-type]


def test_adapt_accepts_a_config_dict_and_file(
    model: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path
) -> None:
    from stvm_sdk.config import as_adapt_config

    assert as_adapt_config({"optim": {"lr": 1e-3}}).optim.lr == 1e-3
    f = tmp_path / "c.toml"
    f.write_text("[run]\niters = 3\n")
    assert as_adapt_config(f).run.iters == 3 and as_adapt_config(str(f)).run.iters == 3
    assert as_adapt_config(None).method == "stvm"


def test_api_oom_names_the_knobs(
    model: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_step(self: Method, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(CPU_OOM)

    monkeypatch.setattr(Method, "step", failing_step)
    cfg = {"run": {"iters": 1}, "data": {"batch_size": 2, "crop": [32, 64]}}
    with pytest.raises(ResourceError) as err:
        _adapt(model, frames[0], config=cfg, out_dir=tmp_path / "run", progress=False, figures=False)
    line = str(err.value)
    assert isinstance(err.value, MemoryError) and "\n" not in line, line
    assert "out of memory (" in line and "--batch-size (data.batch_size, now 2)" in line, line
    assert "--crop (data.crop, now 32x64)" in line, line
    assert err.value.__context__ is None and err.value.__cause__ is None  # the failed step is freed


def test_api_other_runtime_errors_pass(
    model: torch.nn.Module, frames: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_step(self: Method, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug, not memory")

    monkeypatch.setattr(Method, "step", failing_step)
    cfg = {"run": {"iters": 1}, "data": {"batch_size": 2, "crop": [32, 64]}}
    with pytest.raises(RuntimeError, match="a bug, not memory") as err:
        _adapt(model, frames[0], config=cfg, out_dir=tmp_path / "run", progress=False, figures=False)
    assert not isinstance(err.value, StvmError)


def test_train_source_arguments(frames: tuple[Path, Path], tmp_path: Path) -> None:
    from stvm_sdk.supervised import TrainConfig, train_source

    with pytest.raises(ArgumentTypeError, match="images_dir must be a path"):
        train_source(7, None, tmp_path / "m.pt")  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="cfg must be a TrainConfig, got dict"):
        train_source(frames[0], frames[1], tmp_path / "m.pt", {"iters": 1})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"--lr \(TrainConfig.lr\) must be a finite number, got inf"):
        TrainConfig(lr=math.inf)
    with pytest.raises(ConfigError, match=r"--batch-size \(TrainConfig.batch_size\) is 10,000,000"):
        TrainConfig(batch_size=10**7)
    assert TrainConfig(init=tmp_path / "m.pt").init == str(tmp_path / "m.pt")  # type: ignore[arg-type]


def test_out_of_memory_recognised() -> None:
    assert is_out_of_memory(RuntimeError(CPU_OOM))
    assert is_out_of_memory(
        RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB")
    )
    assert is_out_of_memory(OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # only allocators' errors
    line = str(out_of_memory(RuntimeError(CPU_OOM), ["--batch-size", "--crop"]))
    assert line.startswith("out of memory (") and line.endswith("lower --batch-size or --crop"), line
    assert len(line) < 250 and "\n" not in line


def test_error_classes_keep_builtin_bases() -> None:
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, StvmError)
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, ConfigError)
    assert issubclass(ResourceError, MemoryError) and issubclass(ResourceError, StvmError)
