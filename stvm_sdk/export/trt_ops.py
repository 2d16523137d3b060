"""Static check that an ONNX graph is one TensorRT's ONNX parser accepts (no TensorRT needed).

The operator table is transcribed from onnx-tensorrt's ``docs/operators.md`` for TensorRT 10.15
("supports operators in the inclusive range of opset 9 to opset 24"). Only operators marked ``Y``
are listed; the restrictions that our exports can actually trip are checked individually below.
Update :data:`TRT_OPS_SOURCE` together with the table when moving to a newer TensorRT.
"""

from __future__ import annotations

from typing import Any

TRT_OPS_SOURCE = "onnx-tensorrt docs/operators.md, TensorRT 10.15 (opset 9-24)"
TRT_OPSET_RANGE = (9, 24)
# TensorRT 8.5/8.6 (JetPack 5.x, DRIVE OS 6.0) parse opsets up to 17: the default export opset.
TRT8_MAX_OPSET = 17

TRT_PARSER_OPS = frozenset((
    "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh",
    "Attention", "AveragePool", "BatchNormalization", "BlackmanWindow", "Cast", "CastLike", "Ceil", "Celu",
    "Clip", "Concat", "Constant", "ConstantOfShape", "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum",
    "DeformConv", "DepthToSpace", "DequantizeLinear", "Div", "Dropout", "Einsum", "Elu", "Equal", "Erf",
    "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements", "GatherND", "Gelu", "Gemm",
    "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "GridSample",
    "GroupNormalization", "GRU", "HammingWindow", "HannWindow", "HardSigmoid", "HardSwish", "Hardmax",
    "Identity", "If", "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization",
    "LeakyRelu", "Less", "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization",
    "LpPool", "MatMul", "Max", "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mish", "Mod", "Mul",
    "Neg", "NonMaxSuppression", "NonZero", "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow",
    "PRelu", "QuantizeLinear", "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
    "Range", "Reciprocal", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
    "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence",
    "RMSNormalization", "RNN", "RoiAlign", "RotaryEmbedding", "Round", "STFT", "ScaledTanh", "Scan",
    "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin", "Sinh",
    "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub",
    "Sum", "Tan", "Tanh", "TensorScatter", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu",
    "Unsqueeze", "Upsample", "Where", "Xor",
))  # fmt: skip

# Resize restrictions from the same table.
_RESIZE_MODES = {b"nearest", b"linear"}
_RESIZE_COORDS = {
    b"half_pixel",
    b"pytorch_half_pixel",
    b"tf_half_pixel_for_nn",
    b"asymmetric",
    b"align_corners",
}


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _zero_point_problem(node: Any, inits: dict[str, Any]) -> str | None:
    """TensorRT needs symmetric quantization: every Q/DQ zero point must be 0."""
    from onnx import numpy_helper

    if len(node.input) < 3 or not node.input[2]:
        return None
    zp = inits.get(node.input[2])
    if zp is None:
        return f"{node.op_type} '{node.name}': zero point is not a constant"
    if numpy_helper.to_array(zp).any():
        return f"{node.op_type} '{node.name}': zero point must be 0 (quantize symmetrically)"
    return None


def trt_parser_problems(proto: Any) -> list[str]:
    """Why TensorRT's ONNX parser would reject ``proto`` (an ``onnx.ModelProto``); empty if it would not.

    Checks: the default-domain opset, operators outside :data:`TRT_PARSER_OPS` (including other
    domains, e.g. ``com.microsoft``), Resize modes and antialiasing, non-zero Q/DQ zero points.
    """
    problems: list[str] = []
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx") and not TRT_OPSET_RANGE[0] <= entry.version <= TRT_OPSET_RANGE[1]:
            problems.append(
                f"opset {entry.version} is outside TensorRT's {TRT_OPSET_RANGE[0]}-{TRT_OPSET_RANGE[1]}"
            )
    inits = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        for t in node.attribute:
            if t.name == "value" and node.op_type == "Constant":
                inits[node.output[0]] = t.t
    unsupported: dict[str, int] = {}
    zero_points: list[str] = []
    for node in proto.graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if op not in TRT_PARSER_OPS:
            unsupported[op] = unsupported.get(op, 0) + 1
        elif op == "Resize":
            if _attr(node, "mode", b"nearest") not in _RESIZE_MODES:
                problems.append(
                    f"Resize '{node.name}': mode {_attr(node, 'mode')!r} (TensorRT: nearest, linear)"
                )
            if _attr(node, "coordinate_transformation_mode", b"half_pixel") not in _RESIZE_COORDS:
                problems.append(f"Resize '{node.name}': unsupported coordinate transformation")
            if _attr(node, "antialias", 0):
                problems.append(f"Resize '{node.name}': antialiasing is not supported by TensorRT")
        elif op in ("QuantizeLinear", "DequantizeLinear"):
            msg = _zero_point_problem(node, inits)
            if msg:
                zero_points.append(msg)
    if zero_points:  # one line, not hundreds: they all have the same cause
        problems.append(f"{len(zero_points)} Q/DQ node(s), e.g. {zero_points[0]}")
    problems += [
        f"operator {op} (x{n}) is not supported by TensorRT's ONNX parser"
        for op, n in sorted(unsupported.items())
    ]
    return problems


def check_file(path: str) -> list[str]:
    """:func:`trt_parser_problems` for an ONNX file (weights are not loaded)."""
    import onnx

    return trt_parser_problems(onnx.load(path, load_external_data=False))
