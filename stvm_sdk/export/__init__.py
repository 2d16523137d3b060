"""Deployment: ONNX export (`onnx`), INT8 Q/DQ (`quantize`), checks against eager PyTorch (`verify`),
TensorRT engines and the parser's operator table (`tensorrt`, `trt_ops`), sidecars, and
`pipeline.export_model`, which is `stvm export`. TensorRT is only imported inside functions; the
runners that execute graphs and engines live below this package, in `stvm_sdk.runners`.

Names are imported from their modules (``from stvm_sdk.export.pipeline import export_model``): this
package imports nothing itself, so `import stvm_sdk.export.artifacts` stays light.
"""
