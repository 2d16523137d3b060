"""Edge estimate: a roofline LOWER BOUND on latency for in-vehicle GPUs. Not a measurement.

``time >= max(FLOPs / peak_compute, bytes / peak_bandwidth)``. FLOPs count the multiply-adds of
Conv/ConvTranspose/Gemm/MatMul (2 per MAC) from the ONNX graph with static shapes; element-wise
ops are left out (they fuse into the convolutions). ``bytes`` is the traffic no implementation can
avoid: weights once, the input image and the output map. A real engine moves activations too (the
``unfused`` column counts every conv output written and read once) and reaches 30-70 % of the peaks,
so expect measured latency several times the lower bound.

Peaks are GPU-only figures derived from NVIDIA's published module specs (datasheets / technical
briefs): sparse INT8 tensor TOPS of the GPU, of which each precision reaches a share on the tensor
cores (dense INT8 = 1/2, dense FP16 = 1/4: ``tensor_share`` in the precision table), FP32 on the
CUDA cores = 2 x cores x clock. DLAs are not counted. Bytes per element also come from the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stvm_sdk.export.precisions import PRECISIONS, precision


@dataclass(frozen=True)
class EdgeDevice:
    """Published peak figures of one in-vehicle GPU (see the module docstring for how they are derived)."""

    name: str
    gpu_sparse_int8_tops: float
    fp32_tflops: float
    bandwidth_gbs: float
    note: str

    def peak_flops(self, name: str) -> float:
        share = precision(name).tensor_share
        return 1e12 * (self.gpu_sparse_int8_tops * share if share is not None else self.fp32_tflops)


EDGE_DEVICES = (
    EdgeDevice(
        "Jetson Orin Nano 8GB", 40.0, 1.28, 68.0, "1024 CUDA cores @ 625 MHz, LPDDR5 128-bit (no DLA)"
    ),
    EdgeDevice(
        "Jetson Orin NX 16GB", 60.0, 1.88, 102.4, "1024 CUDA cores @ 918 MHz; module 100 TOPS incl. 2 DLA"
    ),
    EdgeDevice(
        "Jetson AGX Orin 64GB", 170.0, 5.32, 204.8, "2048 CUDA cores @ 1.3 GHz; module 275 TOPS incl. 2 DLA"
    ),
    EdgeDevice(
        "DRIVE AGX Orin", 170.0, 5.2, 204.8, "same GA10B GPU class; SoC 254 TOPS incl. DLA, LPDDR5 256-bit"
    ),
)


@dataclass
class ModelCost:
    """FLOPs and bytes of one forward pass at a fixed input shape."""

    flops: float
    params: int
    io_elements: int
    activation_elements: int
    shape: tuple[int, ...]

    def min_bytes(self, name: str) -> float:
        b = precision(name).bytes_per_element
        return self.params * b + self.io_elements * 4  # fp32 image in, logits out (the I/O contract)

    def unfused_bytes(self, name: str) -> float:
        return self.min_bytes(name) + 2 * self.activation_elements * precision(name).bytes_per_element


def edge_precisions() -> list[str]:
    """The precisions the edge estimate lists: those that run on the tensor cores, in table order."""
    return [row.name for row in PRECISIONS.values() if row.tensor_share is not None]


def _static(proto: Any, shape: tuple[int, ...]) -> Any:
    """A copy of ``proto`` with its input fixed to ``shape`` and every shape inferred."""
    import onnx
    from onnx import shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    for dim, v in zip(m.graph.input[0].type.tensor_type.shape.dim, shape, strict=True):
        dim.ClearField("dim_param")
        dim.dim_value = int(v)
    for out in m.graph.output:
        for dim in out.type.tensor_type.shape.dim:
            dim.ClearField("dim_param")
    del m.graph.value_info[:]
    return shape_inference.infer_shapes(m, data_prop=True)  # data_prop resolves Shape->Resize sizes


def _dims(vi: Any) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else 0 for d in vi.type.tensor_type.shape.dim]


def model_cost(proto: Any, shape: tuple[int, ...]) -> ModelCost:
    """Count FLOPs, parameters and activation sizes of an ``onnx.ModelProto`` at input ``shape``."""
    from onnx import numpy_helper

    m = _static(proto, shape)
    shapes = {v.name: _dims(v) for v in [*m.graph.value_info, *m.graph.output, *m.graph.input]}
    inits = {t.name: tuple(t.dims) for t in m.graph.initializer}
    consts = {
        n.output[0]: tuple(numpy_helper.to_array(a.t).shape)
        for n in m.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    }
    weight_shape = {**consts, **inits}
    # In a Q/DQ graph the conv weight is the output of a DequantizeLinear of an initializer.
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in weight_shape:
            weight_shape[n.output[0]] = weight_shape[n.input[0]]
    flops, act = 0.0, 0
    for n in m.graph.node:
        out = shapes.get(n.output[0], [])
        if n.op_type in ("Conv", "ConvTranspose") and n.input[1] in weight_shape:
            w = weight_shape[n.input[1]]
            if n.op_type == "Conv":
                flops += 2.0 * float(np.prod(out)) * float(np.prod(w[1:]))
            else:
                flops += 2.0 * float(np.prod(shapes.get(n.input[0], [0]))) * float(np.prod(w[1:]))
            act += int(np.prod(out))
        elif n.op_type in ("MatMul", "Gemm") and out:
            a = shapes.get(n.input[0]) or [0]
            flops += 2.0 * float(np.prod(out)) * float(a[-1])
            act += int(np.prod(out))
    params = sum(int(np.prod(d)) for name, d in inits.items() if len(d) > 1)
    io = int(np.prod(shape)) + sum(int(np.prod(_dims(o))) for o in m.graph.output)
    return ModelCost(flops, params, io, act, tuple(shape))


def edge_estimates(cost: ModelCost, precision: str) -> list[dict[str, Any]]:
    """One row per device: compute-bound, memory-bound and lower-bound milliseconds."""
    rows = []
    for d in EDGE_DEVICES:
        compute_ms = 1e3 * cost.flops / d.peak_flops(precision)
        memory_ms = 1e3 * cost.min_bytes(precision) / (d.bandwidth_gbs * 1e9)
        unfused_ms = 1e3 * cost.unfused_bytes(precision) / (d.bandwidth_gbs * 1e9)
        rows.append(
            {
                "device": d.name,
                "precision": precision,
                "peak_tflops": d.peak_flops(precision) / 1e12,
                "bandwidth_gbs": d.bandwidth_gbs,
                "compute_ms": compute_ms,
                "memory_ms": memory_ms,
                "lower_bound_ms": max(compute_ms, memory_ms),
                "unfused_memory_ms": unfused_ms,
            }
        )
    return rows
