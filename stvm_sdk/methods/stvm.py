"""``stvm``: self-training via metric learning (Akkaya & Halici, CVIU), as docs/method.md describes.

The mean teacher's pseudo-labels are all used; each pixel's loss is weighted by its reliability, which
a metric network M (a copy of the classifier reading the teacher's features, decision 2) measures
against learnable class proxies (decisions 3-5); the student's input is mixed by the metric-guided
online ClassMix, MOCM (decision 7). M and the proxies train on the teacher's pseudo-labels with a
proxy loss over the global batch (decision 4) and warm up before the student starts learning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from stvm_sdk.errors import ConfigError
from stvm_sdk.methods.base import Logs, Online, Reach
from stvm_sdk.methods.mean_teacher import MeanTeacher, MeanTeacherOptions
from stvm_sdk.methods.parts.metric import MetricHead, balanced_pixel_mask, proxy_anchor_loss, proxy_nca_loss
from stvm_sdk.methods.parts.mixing import mocm
from stvm_sdk.methods.parts.options import MetricConfig, MixConfig, ReliabilityConfig, options_of
from stvm_sdk.methods.parts.pseudo import (
    confident_labels,
    detach_features,
    pixel_reliability,
    pseudo_label_reliability,
)
from stvm_sdk.methods.registry import register_method
from stvm_sdk.models.contract import FeatureHook, classifier_problem, get_submodule, normalize

if TYPE_CHECKING:
    from stvm_sdk.config import AdaptConfig
    from stvm_sdk.models.segmodel import SegModel


@dataclass(frozen=True)
class StvmOptions(MeanTeacherOptions):
    """STvM's knobs: the mean teacher's, plus its metric network's, reliability's and MOCM's."""

    weight_scale: str = "class_mean"  # decision 6: reliability ranks pixels inside their pseudo-class
    metric: MetricConfig = field(default_factory=MetricConfig)  # metric network M and proxies
    reliability: ReliabilityConfig = field(default_factory=ReliabilityConfig)  # each pixel's weight
    mix: MixConfig = field(default_factory=MixConfig)  # MOCM


@register_method
class Stvm(MeanTeacher):
    """Pixel weights from the metric network's reliability, and MOCM on the student's input."""

    name = "stvm"
    summary = "STvM: metric-reliability weights on all pseudo-labels, plus MOCM"
    updates = "all student weights, the metric network and proxies; the teacher follows by EMA"
    order = 70
    eager_only = "hooks the classifier"
    Options = StvmOptions
    # A stream keeps the composites-only MOCM: half the student's compute per step, the rule its
    # continual benchmark measured.
    online = Online(options={"metric.warmup": 40, "mix.keep_clean": False})

    def __init__(self, source: SegModel, cfg: AdaptConfig, generator: torch.Generator) -> None:
        super().__init__(source, cfg, generator)
        if self.classifier is None:
            raise ConfigError(
                f"--method {self.name} reads the classifier's input features: name the classifier "
                "module with --classifier (classifier= in Python)"
            )
        assert self.teacher is not None
        head = get_submodule(self.teacher, self.classifier)
        metric = self.options.metric
        centroid = metric.proxies == "centroid"
        self.metric = MetricHead(head, self.num_classes, metric.embed_dim, generator, centroid=centroid)
        self._teacher_hook = FeatureHook(self.teacher, self.classifier)

    @classmethod
    def _reach(cls, model: SegModel) -> Reach:
        base = super()._reach(model)
        if model.classifier is None:
            return Reach(
                "needs the classifier module: name it with --classifier (classifier= in Python)", fits=False
            )
        problem = classifier_problem(model.module, model.classifier, model.num_classes)
        if problem is not None:
            return Reach(f"needs a head to copy as its metric network, but {problem}", fits=False)
        line = f"{base.updates}; its metric network is a copy of the classifier '{model.classifier}'"
        return Reach(line, counts={**base.counts, "metric_copies": model.classifier})

    def extras(self) -> dict[str, nn.Module]:
        assert self.metric is not None
        return {"metric": self.metric}

    @classmethod
    def load_extras(cls, model: SegModel, cfg: AdaptConfig, state: dict[str, Tensor]) -> dict[str, nn.Module]:
        own = {k[len("metric.") :]: v for k, v in state.items() if k.startswith("metric.")}
        if not own or model.classifier is None:
            return {}
        options = options_of(cls, cfg.methods.get(cls.name))
        head = get_submodule(model.module, model.classifier)
        # What the saved state holds decides: a run recorded before centroid proxies existed has no
        # `proxies` key in its config (today's default would say centroid) but learned proxies.
        centroid = "centroids" in own
        metric = MetricHead(head, model.num_classes, options.metric.embed_dim, centroid=centroid)
        metric.load_state_dict(own)
        return {"metric": metric}

    @classmethod
    def has_pixel_weights(cls, extras: dict[str, nn.Module]) -> bool:
        return isinstance(extras.get("metric"), MetricHead)

    @classmethod
    @torch.no_grad()
    def pixel_weights(
        cls, teacher: SegModel | None, extras: dict[str, nn.Module], cfg: AdaptConfig, images: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The teacher's pseudo-labels and the metric network's reliability of each (decision 5)."""
        metric = extras.get("metric")
        if not isinstance(metric, MetricHead) or teacher is None or teacher.classifier is None:
            raise ValueError(f"a reliability map needs the run's teacher and metric network ({cls.name})")
        options = options_of(cls, cfg.methods.get(cls.name))
        x = normalize(images, teacher.mean, teacher.std)
        return pseudo_label_reliability(
            teacher.module.eval(), teacher.classifier, metric.eval(), x, options.reliability
        )

    @property
    def warmup(self) -> int:
        return int(self.options.metric.warmup)

    def param_groups(self) -> list[dict[str, Any]]:
        """The student's groups, then M's body and the learned proxies (decision 3: at x100 M's lr)."""
        assert isinstance(self.metric, MetricHead)
        m_mult = self.cfg.optim.head_lr_mult
        groups = [*super().param_groups(), {"params": list(self.metric.body.parameters()), "lr_mult": m_mult}]
        if not self.metric.centroid:  # centroid proxies follow the embeddings, they are not learned
            groups.append(
                {"params": [self.metric.proxies], "lr_mult": m_mult * self.options.metric.proxy_lr_mult}
            )
        return groups

    def weigh(
        self, t_logits: Tensor, conf: Tensor, pseudo: Tensor, g_batch: torch.Generator, logs: Logs
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The metric loss (M and proxies only) and each pixel's reliability (decisions 4-5)."""
        assert isinstance(self.metric, MetricHead)
        cfg = self.options.metric
        z = self.net("metric")(detach_features(self._teacher_hook.pop()))
        small = nnf.interpolate(t_logits, size=z.shape[-2:], mode="bilinear", align_corners=False)
        y_feat = small.argmax(1)
        # The metric loss is a set function of the batch (per-class caps, per-proxy sums): take it
        # over the global batch, identical on every process (identity in one process).
        z_all, y_all = self.comm.gather(z), self.comm.gather(y_feat)
        if cfg.clean == "confident" or cfg.proxies == "centroid":
            c_all = self.comm.gather(small.softmax(1).amax(1))
        if cfg.proxies == "centroid":  # the proxies follow the classes' confidence-weighted centroids
            self.metric.update_centroids(z_all, y_all, c_all, cfg.centroid_momentum)
        if cfg.clean == "confident":  # M learns from each class's most confident pixels only
            y_all = confident_labels(y_all, c_all, self.num_classes, cfg.clean_quantile)
        mask = balanced_pixel_mask(y_all, self.num_classes, cfg.pixels_per_class, g_batch)
        proxies = self.metric.unit_proxies()
        if cfg.loss == "proxy_anchor":
            l_metric = proxy_anchor_loss(z_all, y_all, proxies, mask, cfg.alpha, cfg.delta)
        else:
            l_metric = proxy_nca_loss(z_all, y_all, proxies, mask, cfg.nca_scale)
        logs["loss_metric"] = l_metric.detach()
        backend = self.cfg.run.kernel_backend
        weights = pixel_reliability(
            z, proxies, y_feat, pseudo, conf, self.options.reliability, self.num_classes, backend
        )
        return t_logits.new_zeros(()) + cfg.weight * l_metric, weights, pseudo

    def mix(
        self, images: Tensor, labels: Tensor, weights: Tensor, g: torch.Generator, logs: Logs
    ) -> tuple[Tensor, Tensor, Tensor]:
        """MOCM (decision 7): paste reliable patches of chosen classes onto the next sample."""
        mix = self.options.mix
        labels_in, weights_in = labels, weights
        x, labels, weights, mask = mocm(
            images, labels, weights, self.num_classes, patch=mix.patch, tau=mix.tau,
            fraction=mix.class_fraction, generator=g, backend=self.cfg.run.kernel_backend,
            rare_power=mix.rare_power, prob=mix.prob,
        )  # fmt: skip
        logs["mix_fraction"] = mask.float().mean()
        if mix.keep_clean:  # the frames themselves too: MOCM adds composites instead of replacing frames
            return torch.cat([images, x]), torch.cat([labels_in, labels]), torch.cat([weights_in, weights])
        return x, labels, weights
