"""One inference interface over the three artifact kinds: `.pt` (eager torch, `torch`), `.onnx` (ONNX
Runtime, `ort`) and `.engine` (TensorRT, `trt`), and `dispatch.open_runner`, which picks one for a file.

This package sits below both `stvm_sdk.export` (verification runs graphs in ONNX Runtime) and
`stvm_sdk.bench` (timing): it imports neither (tests/test_layering.py checks it). TensorRT is only
imported inside functions, after a CUDA device was found. Names are imported from their modules
(``from stvm_sdk.runners.dispatch import open_runner``): this package imports nothing itself.
"""
