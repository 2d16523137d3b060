"""TensorRT engines from the exported ONNX: optimisation profiles, build, compatibility, inference.

``tensorrt`` is imported inside functions, and only after a CUDA device was found: creating
TensorRT objects without a GPU crashes some TensorRT builds (see ``shared/docs/env.md``). Without a
GPU or TensorRT, :func:`trt_unavailable_reason` says what is missing and how to get it; the same
engine can then be built on the car with the command from :func:`trtexec_command`.

An engine only runs with the TensorRT version and GPU (compute capability) it was built for, so its
sidecar records both and :meth:`TrtRunner.check_compatible` refuses a mismatch before deserialising.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stvm_sdk.bench.runners import Runner
from stvm_sdk.boundary.outputs import write_bytes_atomic
from stvm_sdk.errors import BackendUnavailableError, ConfigError, ModelLoadError
from stvm_sdk.export.artifacts import read_sidecar, sidecar_path

INSTALL_HINT = (
    "install TensorRT >= 10 on a machine with an NVIDIA GPU and driver "
    "(pip install 'stvm_sdk[trt]'), or build on the target with the trtexec command above"
)
_SHAPE = re.compile(r"^(?:(\d+)x)?(\d+)x(\d+)$")


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


def parse_profile(spec: str, batch: int = 1) -> Profile:
    """``"512x1024"`` (a fixed shape) or ``"MIN:OPT:MAX"`` with each ``[B x]HxW`` -> :class:`Profile`.

    Raises:
        ConfigError: malformed spec, or min <= opt <= max does not hold.
    """
    parts = spec.strip().split(":")
    if len(parts) not in (1, 3):
        raise ConfigError(
            f"--shape {spec!r}: use HxW (e.g. 512x1024) or MIN:OPT:MAX (e.g. 256x512:512x1024:1024x2048)"
        )
    shapes = []
    for p in parts:
        m = _SHAPE.match(p.strip())
        if not m or int(m.group(2)) < 1 or int(m.group(3)) < 1:
            raise ConfigError(f"--shape {spec!r}: {p!r} is not HxW or BxHxW with positive integers")
        shapes.append((int(m.group(1) or batch), 3, int(m.group(2)), int(m.group(3))))
    lo, opt, hi = (shapes[0], shapes[0], shapes[0]) if len(shapes) == 1 else shapes
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
        raise ConfigError(f"--shape {spec!r}: needs min <= opt <= max in every dimension")
    return Profile(lo, opt, hi)


def trtexec_command(
    onnx_path: Path,
    engine_path: Path,
    profile: Profile,
    precision: str,
    *,
    input_name: str = "image",
    workspace_mib: int = 4096,
) -> str:
    """The ``trtexec`` command line that builds the same engine as :func:`build_engine`."""
    args = [
        "trtexec", f"--onnx={onnx_path.name}", f"--saveEngine={engine_path.name}",
        f"--minShapes={input_name}:{fmt_shape(profile.min)}",
        f"--optShapes={input_name}:{fmt_shape(profile.opt)}",
        f"--maxShapes={input_name}:{fmt_shape(profile.max)}", f"--memPoolSize=workspace:{workspace_mib}M",
        f"--timingCacheFile={engine_path.stem}.timing.cache",
    ]  # fmt: skip
    # fp16 also for the Q/DQ graph: layers TensorRT keeps in float may then run in half precision.
    args += {"fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}.get(precision, [])
    return " ".join(args)


def gpu_identity() -> dict[str, Any] | None:
    """Name and compute capability of CUDA device 0, or None without a usable GPU (no TensorRT touched)."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def trt_unavailable_reason() -> str | None:
    """Why engines cannot be built or run here (one line with a hint), or None when they can."""
    if gpu_identity() is None:
        return f"no CUDA GPU is visible, so no TensorRT engine was built: {INSTALL_HINT}"
    try:
        import tensorrt  # noqa: F401
    except Exception as exc:  # ImportError, or a stub package that raises on import
        return f"TensorRT does not import ({type(exc).__name__}): {INSTALL_HINT}"
    return None


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    profile: Profile,
    precision: str,
    *,
    workspace_mib: int = 4096,
    input_name: str = "image",
) -> dict[str, Any]:
    """Build a serialized engine from ``onnx_path`` with TensorRT's Python API; return sidecar fields.

    The timing cache (``<engine>.timing.cache``) is reused and updated, so rebuilds take seconds.

    Raises:
        BackendUnavailableError: no GPU or no TensorRT. ModelLoadError: the parser or builder failed.
    """
    reason = trt_unavailable_reason()
    if reason:
        raise BackendUnavailableError(reason)
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, logger, onnx_path)
    cache_path = engine_path.with_name(engine_path.stem + ".timing.cache")
    config = _config(trt, builder, profile, precision, workspace_mib, input_name, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ModelLoadError(f"TensorRT failed to build an engine from {onnx_path.name} (see the log above)")
    del parser  # kept alive until the build: the network refers to weights the parser owns
    write_bytes_atomic(bytes(serialized), engine_path)
    write_bytes_atomic(bytes(config.get_timing_cache().serialize()), cache_path)
    return {
        "tensorrt": trt.__version__,
        **(gpu_identity() or {}),
        "profile": profile.to_dict(),
        "workspace_mib": workspace_mib,
        "input_name": input_name,
    }


def _parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """The network parsed from ``onnx_path`` (explicit batch: the default from TensorRT 10 on)."""
    major = int(str(trt.__version__).split(".")[0])
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # by path: external-data files are found beside it
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelLoadError(f"TensorRT cannot parse {onnx_path.name}: {errors[:300]}")
    return network, parser


def _config(trt: Any, builder: Any, profile: Profile, precision: str, workspace_mib: int, input_name: str,
            cache_path: Path) -> Any:  # fmt: skip
    """Builder config: workspace limit, precision flags, the optimisation profile, the timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the Q/DQ nodes
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return config


class TrtRunner(Runner):
    """Runs an engine on CUDA tensors (torch owns the memory); see :class:`stvm_sdk.bench.runners.Runner`."""

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
        trt_version = _trt_version()
        if (trt_version, here["compute_capability"]) != (meta["tensorrt"], meta.get("compute_capability")):
            raise ModelLoadError(
                f"{path.name} was built for {built}; this machine has TensorRT {trt_version} on "
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
        self.num_classes = len(self.class_names) if self.class_names else None

    def prepare(self, x: Any) -> Any:
        import torch

        self.check_compatible(self.path, tuple(x.shape))
        return torch.as_tensor(x, device="cuda", dtype=torch.float32).contiguous()

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


def _trt_version() -> str:
    try:
        import tensorrt as trt
    except Exception as exc:
        raise BackendUnavailableError(
            f"TensorRT does not import ({type(exc).__name__}): {INSTALL_HINT}"
        ) from None
    return str(trt.__version__)
