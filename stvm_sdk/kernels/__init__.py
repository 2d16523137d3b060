"""Hot ops of an STvM step: pure-PyTorch references (the spec) and fused Triton kernels.

Importing this package never imports Triton; the kernels load on the first Triton dispatch.
"""

from stvm_sdk.kernels.dispatch import exporting, resolve_backend
from stvm_sdk.kernels.ops import mocm_blend, proxy_reliability, weighted_cross_entropy

__all__ = ["exporting", "mocm_blend", "proxy_reliability", "resolve_backend", "weighted_cross_entropy"]
