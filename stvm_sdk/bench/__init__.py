"""Inference runners for .pt/.onnx/.engine (`runners`), latency measurement (`timing`), the edge
roofline estimate (`roofline`) and `run.bench_models`, which is `stvm bench`."""
