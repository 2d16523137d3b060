"""TensorRT engines from the exported ONNX: the ``--shape`` profile, the trtexec line, the build.

``tensorrt`` is imported inside functions, and only after a CUDA device was found: creating
TensorRT objects without a GPU crashes some TensorRT builds (see docs/environment.md). Without a
GPU or TensorRT, :func:`trt_unavailable_reason` says what is missing and how to get it; the same
engine can then be built on the car with the command from :func:`trtexec_command`. Running engines
(and refusing foreign ones) is :class:`stvm_sdk.runners.trt.TrtRunner`'s job.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from stvm_sdk.boundary.args import check_hw
from stvm_sdk.boundary.outputs import write_bytes_atomic
from stvm_sdk.errors import BackendUnavailableError, ConfigError, ModelLoadError
from stvm_sdk.export.precisions import precision as precision_row
from stvm_sdk.runners.trt import INSTALL_HINT, Profile, fmt_shape, gpu_identity

_SHAPE = re.compile(r"^(?:(\d+)x)?(\d+)x(\d+)$")


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
        check_hw((int(m.group(2)), int(m.group(3))), "--shape")
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
    return " ".join(args + precision_row(precision).trtexec_flags)


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
    for flag in precision_row(precision).trt_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return config
