"""The option sections the self-training methods share: frozen dataclasses, validated on creation.

A method's own knobs live in its config section ``[methods.<name>]`` (its ``Options`` dataclass, in
its own module); the sections here are the parts several methods reuse: the student's strong
augmentation (every mean-teacher method), and STvM's metric network, reliability and mixing
(``stvm``, ``stvm_no_mocm``). Torch-free, so that writing or reading a config stays cheap. Messages
name the key relative to the method's section (``metric.warmup``); the config reader prefixes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stvm_sdk.config import build_section
from stvm_sdk.errors import ConfigError


def options_of(cls: Any, section: dict[str, Any] | None) -> Any:
    """The method class ``cls``'s ``Options`` built from its config section ``[methods.<name>]``
    (None for a method without options). A wrong key or value is one :class:`ConfigError` line naming
    the full key."""
    prefix = f"methods.{cls.name}."
    if cls.Options is None:
        if section:
            raise ConfigError(f"config section '{prefix[:-1]}': method {cls.name} has no options")
        return None
    try:
        return build_section(cls.Options, section or {}, prefix)
    except ConfigError as exc:
        line = str(exc)
        raise type(exc)(line if "methods." in line else prefix + line) from None


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclass(frozen=True)
class MetricConfig:
    """Metric network M and proxies (decisions 2-5)."""

    embed_dim: int = 128  # embedding size D of the metric network
    loss: str = "proxy_anchor"  # metric loss: proxy_anchor | proxy_nca
    alpha: float = 32.0  # Proxy-Anchor scale
    delta: float = 0.1  # Proxy-Anchor margin
    nca_scale: float = 16.0  # Proxy-NCA softmax scale
    pixels_per_class: int = 512  # class-balanced sampling cap per batch
    proxy_lr_mult: float = 100.0  # proxies' lr relative to M's (Proxy-Anchor convention)
    # What the class proxies are: "learned" free parameters (the paper, Proxy-Anchor), or "centroid"
    # (decision 3): EMA class centroids of M's embeddings (each pixel weighted by the teacher's
    # confidence), so a proxy sits where its class's pixels are and the reliability measures how
    # typical a pixel is of its pseudo-class.
    proxies: str = "centroid"
    centroid_momentum: float = 0.99  # EMA factor of the centroid proxies (per step)
    # Which pseudo-labelled pixels train M and P: "all" (the paper) or "confident": each class's
    # `clean_quantile` most confident share of the batch (CBST-style), so M learns what a clean pixel
    # of a class looks like instead of fitting the teacher's systematic errors.
    clean: str = "all"
    clean_quantile: float = 0.5  # share of each class's most confident pixels kept when clean = "confident"
    warmup: int = 40  # steps where M and P train while the student waits (decision 5)
    weight: float = 1.0  # lambda in L = L_st + lambda * L_M

    def __post_init__(self) -> None:
        _check(self.embed_dim >= 2, "metric.embed_dim must be >= 2")
        _check(
            self.loss in ("proxy_anchor", "proxy_nca"),
            f"metric.loss must be proxy_anchor|proxy_nca, got {self.loss}",
        )
        _check(
            self.pixels_per_class >= 1 and self.warmup >= 0,
            "metric.pixels_per_class >= 1, metric.warmup >= 0",
        )
        _check(self.clean in ("all", "confident"), f"metric.clean must be all|confident, got {self.clean}")
        _check(
            self.proxies in ("learned", "centroid"),
            f"metric.proxies must be learned|centroid, got {self.proxies}",
        )
        _check(0.0 <= self.centroid_momentum < 1.0, "metric.centroid_momentum must be in [0, 1)")
        _check(0.0 < self.clean_quantile <= 1.0, "metric.clean_quantile must be in (0, 1]")


@dataclass(frozen=True)
class ReliabilityConfig:
    """How a pixel's reliability weight is computed and used (decisions 5-6)."""

    # softmax | cosine | agreement | combined: confidence^a * softmax^(1-a), decision 5 (the paper's
    # rule is "softmax" alone)
    mode: str = "combined"
    scale: float = 4.0  # softmax scale gamma of the reliability (the first reconstruction: 16)
    confidence_power: float = 0.75  # a, for mode "combined"
    classwise: bool = False  # replace each weight by its quantile inside its pseudo-class (the batch's)

    def __post_init__(self) -> None:
        _check(
            self.mode in ("softmax", "cosine", "agreement", "combined"),
            f"reliability.mode must be softmax|cosine|agreement|combined, got {self.mode}",
        )
        _check(0.0 <= self.confidence_power <= 1.0, "reliability.confidence_power must be in [0, 1]")


@dataclass(frozen=True)
class MixConfig:
    """Metric-guided online ClassMix (decision 7)."""

    patch: int = 32  # MOCM patch size p in pixels
    tau: float = 0.5  # minimum mean reliability of a pasted patch
    class_fraction: float = 0.5  # share of the present classes that are pasted
    # Classes are drawn with probability ∝ mean reliability x (share of the sample's pixels)^-rare_power:
    # 0 is the paper's rule; > 0 favours rare classes (DAFormer's rare-class sampling, per sample).
    rare_power: float = 0.0
    # Probability that a sample of the batch is mixed; the others reach the student whole (1 = the
    # paper: every sample is a mix, so the student never sees an unmixed frame's full context).
    prob: float = 1.0
    # The student also sees every frame whole: its batch is the frames and their composites (twice
    # the student's compute per step; decision 7). False: the composites only (the paper).
    keep_clean: bool = True

    def __post_init__(self) -> None:
        _check(self.patch >= 1 and 0.0 <= self.tau <= 1.0, "mix.patch >= 1 and 0 <= mix.tau <= 1")
        _check(0.0 <= self.prob <= 1.0, "mix.prob must be in [0, 1]")
        _check(0.0 < self.class_fraction <= 1.0, "mix.class_fraction must be in (0, 1]")
        _check(self.rare_power >= 0.0, "mix.rare_power must be >= 0")


@dataclass(frozen=True)
class AugConfig:
    """Strong photometric augmentation of the student's input (decision 7)."""

    jitter_prob: float = 0.8  # probability of colour jitter on a student image
    brightness: float = 0.4  # colour jitter: brightness strength
    contrast: float = 0.4  # colour jitter: contrast strength
    saturation: float = 0.4  # colour jitter: saturation strength
    blur_prob: float = 0.5  # probability of a Gaussian blur on a student image
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # Gaussian blur sigma range [min, max] in pixels
