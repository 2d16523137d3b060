"""Latency measurement (`timing`), the edge roofline estimate (`roofline`) and `run.bench_models`,
which is `stvm bench`. The runners it times live in `stvm_sdk.runners`."""
