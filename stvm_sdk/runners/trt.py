"""TensorRT engines at run time: optimisation profiles, compatibility checks and the ``.engine`` runner.

``tensorrt`` is imported inside functions, and only after a CUDA device was found: creating
TensorRT objects without a GPU crashes some TensorRT builds (see docs/environment.md).

An engine only runs with the TensorRT version and GPU (compute capability) it was built for, so its
sidecar records both and :meth:`TrtRunner.check_compatible` refuses a mismatch before deserialising.
Building engines is `stvm_sdk.export.tensorrt`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stvm_sdk.errors import BackendUnavailableError, ConfigError, ModelLoadError
from stvm_sdk.runners.base import Runner
from stvm_sdk.runners.contract import Contract, check_output, read_sidecar, sidecar_path, unknown_input_line

INSTALL_HINT = (
    "install TensorRT >= 10 on a machine with an NVIDIA GPU and driver "
    "(pip install 'stvm_sdk[trt]'), or build on the target with the trtexec command above"
)


@dataclass(frozen=True)
class Profile:
    """Optimisation profile: min/opt/max input shapes ``(B,3,H,W)``."""

    min: tuple[int, int, int, int]
    opt: tuple[int, int, int, int]
    max: tuple[int, int, int, int]

    def contains(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == 4 and all(
            lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=True)
        )

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Profile:
        return Profile(tuple(d["min"]), tuple(d["opt"]), tuple(d["max"]))  # type: ignore[arg-type]


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def gpu_identity() -> dict[str, Any] | None:
    """Name and compute capability of CUDA device 0, or None without a usable GPU (no TensorRT touched)."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def trt_version() -> str:
    """The installed TensorRT's version; raises with an install hint when it does not import."""
    try:
        import tensorrt as trt
    except Exception as exc:
        raise BackendUnavailableError(
            f"TensorRT does not import ({type(exc).__name__}): {INSTALL_HINT}"
        ) from None
    return str(trt.__version__)


class TrtRunner(Runner):
    """Runs an engine on CUDA tensors (torch owns the memory); see :class:`stvm_sdk.runners.base.Runner`."""

    backend, device = "trt", "cuda"

    @staticmethod
    def check_compatible(path: Path, shape: tuple[int, ...] | None = None) -> dict[str, Any]:
        """Refuse an engine built for another GPU/TensorRT, or a shape outside its profile.

        Only the sidecar and the CUDA runtime are consulted: no TensorRT object is created.
        """
        meta = read_sidecar(path)
        if not meta or "tensorrt" not in meta:
            raise ModelLoadError(
                f"{path.name} has no engine sidecar ({sidecar_path(path).name}); its TensorRT "
                "version and GPU are unknown: rebuild it with stvm export --trt"
            )
        cc = meta.get("compute_capability", "?")
        built = f"TensorRT {meta['tensorrt']} on {meta.get('gpu', '?')} (sm {cc})"
        if shape is not None and "profile" in meta:
            prof = Profile.from_dict(meta["profile"])
            if not prof.contains(tuple(shape)):
                raise ConfigError(
                    f"input {fmt_shape(tuple(shape))} is outside {path.name}'s profile "
                    f"(min {fmt_shape(prof.min)}, max {fmt_shape(prof.max)}): use a shape "
                    "inside it, or rebuild with stvm export --trt --shape MIN:OPT:MAX"
                )
        here = gpu_identity()
        if here is None:
            raise BackendUnavailableError(
                f"{path.name} was built for {built}; this machine has no CUDA GPU: "
                "run it on that target, or rebuild from the .onnx there"
            )
        version = trt_version()
        if (version, here["compute_capability"]) != (meta["tensorrt"], meta.get("compute_capability")):
            raise ModelLoadError(
                f"{path.name} was built for {built}; this machine has TensorRT {version} on "
                f"{here['gpu']} (sm {here['compute_capability']}): rebuild it here with stvm export --trt"
            )
        return meta

    def __init__(self, path: Path) -> None:
        import tensorrt as trt
        import torch

        super().__init__(path)
        self.meta = self.check_compatible(path)
        self.precision = str(self.meta.get("precision", "fp16"))
        self.profile = Profile.from_dict(self.meta["profile"])
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelLoadError(
                f"TensorRT could not deserialize {path.name}: rebuild it with stvm export --trt"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if n != self.input_name)
        self.output = (
            "classes" if self.engine.get_tensor_dtype(self.output_name) == trt.DataType.UINT8 else "logits"
        )
        self.out_dtype = torch.uint8 if self.output == "classes" else torch.float32
        self.class_names = self.meta.get("classes")
        self.num_classes = self.meta.get("num_classes") or (
            len(self.class_names) if self.class_names else None
        )
        # The engine's input is what its ONNX graph took: normalised here when the graph did not bake it.
        self.baked: bool | None = (self.meta.get("input") or {}).get("normalization_baked")
        self.mean = torch.tensor(self.meta.get("mean") or (0.0, 0.0, 0.0), device="cuda").view(1, 3, 1, 1)
        self.std = torch.tensor(self.meta.get("std") or (1.0, 1.0, 1.0), device="cuda").view(1, 3, 1, 1)

    @property
    def input_known(self) -> bool:
        return self.baked is not None

    def prepare(self, x: Any) -> Any:
        import torch

        if self.baked is None:
            raise ModelLoadError(unknown_input_line(self.path))
        self.check_compatible(self.path, tuple(x.shape))
        t = torch.as_tensor(x, device="cuda", dtype=torch.float32)
        return (t if self.baked else (t - self.mean) / self.std).contiguous()

    def check(self, out: Any) -> None:
        stated = Contract(
            num_classes=self.num_classes, class_names=self.class_names, source=str(sidecar_path(self.path))
        )
        check_output(out, stated, self.path)

    def run(self, x: Any) -> Any:
        import torch

        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty(
            tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.out_dtype, device="cuda"
        )
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise ModelLoadError(f"TensorRT failed to run {self.path.name}")
        return out
