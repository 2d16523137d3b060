"""One STvM step (and its baselines) as a readable function of a batch.

Pure torch: no I/O, no printing, no host syncs. Teacher T and student S start from the source model
(after decision 0's BN re-estimation, done by the caller); the metric network M reads the teacher's
classifier input. The ablation ladder differs only in the pixel weights and in MOCM:

| method              | pseudo-labels          | weight              | MOCM |
|---------------------|------------------------|---------------------|------|
| threshold_st        | top-p% confident only  | 1                   | no   |
| mean_teacher        | all                    | 1                   | no   |
| confidence_weighted | all                    | teacher max-softmax | no   |
| stvm_no_mocm        | all                    | metric reliability  | no   |
| stvm                | all                    | metric reliability  | yes  |
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from stvm_sdk.config import SELF_TRAINING, AdaptConfig
from stvm_sdk.kernels import proxy_reliability, weighted_cross_entropy
from stvm_sdk.method.augment import strong_augment
from stvm_sdk.method.collective import Collective
from stvm_sdk.method.ema import ema_beta, ema_update
from stvm_sdk.method.metric import MetricHead, balanced_pixel_mask, proxy_anchor_loss, proxy_nca_loss
from stvm_sdk.method.mixing import mocm
from stvm_sdk.method.norm import batchnorms, configure_tent
from stvm_sdk.models.contract import FeatureHook, capture_features, forward_logits, get_submodule, normalize

IGNORE = 255


def _detach(features: Any) -> Any:
    if isinstance(features, dict):
        return {k: v.detach() for k, v in features.items()}
    return features.detach()


def reliability(z: Tensor, proxies: Tensor, labels: Tensor, mode: str, scale: float, backend: str) -> Tensor:
    """Reliability ``[B,h,w]`` in [0,1] of pseudo-labels at feature resolution (decision 5), detached."""
    z, proxies = z.detach(), proxies.detach()
    if mode == "softmax":
        return proxy_reliability(z, proxies, labels, scale=scale, backend=backend)[0]
    if mode == "agreement":
        _, nearest = proxy_reliability(z, proxies, labels, scale=scale, backend=backend)
        return (nearest == labels).float()
    cos = torch.einsum(
        "bdhw,bdhw->bhw", z, proxies[labels.clamp(max=proxies.shape[0] - 1)].permute(0, 3, 1, 2)
    )
    return torch.where(labels == IGNORE, torch.zeros_like(cos), (1 + cos) / 2)


def label_counts(labels: Tensor) -> Tensor:
    """How many pixels carry each label value: an int64 ``[256]`` tensor (ignore index included).

    A fixed-size scatter, not ``torch.bincount``: on CUDA bincount reads the input's max back to the
    host to size its output, a sync in every training step."""
    flat = labels.flatten().long()
    zeros = torch.zeros(IGNORE + 1, dtype=torch.long, device=flat.device)
    return zeros.index_add_(0, flat, torch.ones_like(flat))


def class_balance(counts: Tensor, num_classes: int) -> Tensor:
    """Weight factor per label value (a ``[256]`` tensor to index with labels) for decision 6's
    ``normalize="class"``, from :func:`label_counts`: ``N / (K' * n_k)`` for a class k with n_k of the
    N valid pixels (K' classes present), 0 for absent classes and the ignore index. Scaling each pixel's
    weight by it turns the mean over valid pixels into the mean over present classes of each class's
    mean weighted loss."""
    counts = counts.to(torch.float32, copy=True)
    counts[num_classes:] = 0.0  # the ignore index carries no weight
    present = counts > 0
    return torch.where(present, counts.sum() / (present.sum().clamp_min(1) * counts.clamp_min(1)), 0.0)


def pseudo_label_reliability(
    teacher: nn.Module, classifier: str, metric: MetricHead, x: Tensor, mode: str, scale: float
) -> tuple[Tensor, Tensor]:
    """Teacher pseudo-labels and their reliability at pixel resolution for normalised images ``x``."""
    with capture_features(teacher, classifier) as hook:
        logits = forward_logits(teacher, x).float()
        z = metric(_detach(hook.pop()))
    pseudo = logits.argmax(1)
    y_feat = nnf.interpolate(logits, size=z.shape[-2:], mode="bilinear", align_corners=False).argmax(1)
    r = reliability(z, metric.unit_proxies(), y_feat, mode, scale, "auto")
    r = nnf.interpolate(r[:, None], size=pseudo.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return pseudo, r.clamp(0.0, 1.0)


class Adapter(nn.Module):
    """Teacher, student, metric network + proxies, and the optimiser: everything a step changes."""

    def __init__(
        self,
        source: nn.Module,
        classifier: str | None,
        num_classes: int,
        cfg: AdaptConfig,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.cfg, self.num_classes, self.mean, self.std = cfg, num_classes, mean, std
        self.student = copy.deepcopy(source).train()
        for p in self.student.parameters():
            p.requires_grad_(True)
        if cfg.student_bn == "frozen" and cfg.method in SELF_TRAINING:
            for bn in batchnorms(self.student):  # affine parameters still learn; statistics stay put
                bn.eval()
        self.teacher: nn.Module | None = None
        self.metric: MetricHead | None = None
        if cfg.method in SELF_TRAINING:
            self.teacher = copy.deepcopy(source).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        if cfg.uses_metric:
            if classifier is None:
                raise ValueError("STvM needs the classifier's module path to read its input features")
            head = get_submodule(self.teacher, classifier)  # type: ignore[arg-type]
            self.metric = MetricHead(head, num_classes, cfg.metric.embed_dim, generator)
            self._teacher_hook = FeatureHook(self.teacher, classifier)  # type: ignore[arg-type]
        self.optimizer = self._make_optimizer(classifier)
        # Set by stvm_sdk.distributed for multi-process runs: the DistributedDataParallel wrappers the
        # step runs forward through, and the cross-process operations. A plain dict (not a module
        # attribute) keeps the wrappers out of state_dict, so checkpoint keys never change.
        self.wrappers: dict[str, nn.Module] = {}
        self.comm = Collective()

    def _net(self, name: str) -> nn.Module:
        """The network to run forward: its DDP wrapper when there is one, else the network itself."""
        wrapper = self.wrappers.get(name)  # not `or`: an empty nn.Sequential is falsy
        return wrapper if wrapper is not None else getattr(self, name)

    def _make_optimizer(self, classifier: str | None) -> torch.optim.Optimizer | None:
        o = self.cfg.optim
        if self.cfg.method in ("source_only", "adabn"):
            return None
        if self.cfg.method == "tent":
            return torch.optim.Adam(configure_tent(self.student), lr=o.tent_lr, betas=(0.9, 0.999))
        head = f"{classifier}." if classifier else "\0"
        named = list(self.student.named_parameters())
        groups = [
            {"params": [p for n, p in named if not n.startswith(head)], "lr_mult": 1.0},
            {"params": [p for n, p in named if n.startswith(head)], "lr_mult": o.head_lr_mult},
        ]
        if self.metric is not None:
            m_mult = o.head_lr_mult
            groups.append({"params": list(self.metric.body.parameters()), "lr_mult": m_mult})
            groups.append(
                {"params": [self.metric.proxies], "lr_mult": m_mult * self.cfg.metric.proxy_lr_mult}
            )
        groups = [g for g in groups if g["params"]]
        if o.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        return torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)

    @property
    def warmup(self) -> int:
        return self.cfg.metric.warmup if self.metric is not None else 0

    def lr_at(self, step: int) -> float:
        """Poly decay: lr * (1 - t/T)^power."""
        total = max(self.cfg.run.iters, 1)
        return self.cfg.optim.lr * (1.0 - min(step, total - 1) / total) ** self.cfg.optim.poly_power

    def deliverable(self) -> nn.Module:
        """The output model (decision 10): the teacher unless configured otherwise or there is none."""
        if self.teacher is not None and self.cfg.deliverable == "teacher":
            return self.teacher
        return self.student

    def step(
        self, images: Tensor, step: int, g: torch.Generator, g_batch: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """One optimisation step on target images ``[B,3,H,W]`` in [0,1]; returns detached log tensors.

        ``g`` draws this process's per-sample randomness (MOCM, augmentation); ``g_batch`` draws over
        the global batch (the metric's pixel sampling) and must be the same on every process. In one
        process it defaults to ``g``: one stream, as before multi-process runs existed.
        """
        if self.optimizer is None:
            return {}
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = (self.cfg.optim.tent_lr if self.cfg.method == "tent" else lr) * group.get(
                "lr_mult", 1.0
            )
        amp = self.cfg.run.amp and images.is_cuda
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=amp):
            loss, logs = (
                self._tent_loss(images)
                if self.cfg.method == "tent"
                else self._st_loss(images, step, g, g if g_batch is None else g_batch)
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        # BN running statistics are not gradients, so DDP leaves them per-process: average them so
        # the teacher's EMA below sees the same student everywhere.
        self.comm.sync_buffers(self.student)
        if self.teacher is not None and step >= self.warmup:
            ema_update(self.teacher, self.student, ema_beta(step - self.warmup, self.cfg.optim.ema_max))
        logs["loss"] = loss.detach()
        logs["lr"] = torch.tensor(self.optimizer.param_groups[0]["lr"])
        return logs

    def _tent_loss(self, images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = forward_logits(self._net("student"), normalize(images, self.mean, self.std)).float()
        logp = nnf.log_softmax(logits, 1)
        entropy = -(logp.exp() * logp).sum(1).mean()
        return entropy, {"loss_entropy": entropy.detach()}

    def _st_loss(
        self, images: Tensor, step: int, g: torch.Generator, g_batch: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        assert self.teacher is not None
        cfg, backend = self.cfg, self.cfg.run.kernel_backend
        with torch.no_grad():
            t_logits = forward_logits(self.teacher, normalize(images, self.mean, self.std)).float()
            conf, pseudo = t_logits.softmax(1).max(1)
        logs: dict[str, Tensor] = {"pseudo_hist": label_counts(pseudo)[: self.num_classes]}
        loss = t_logits.new_zeros(())
        weights = torch.ones_like(conf)
        labels = pseudo
        if self.metric is not None:
            z = self._net("metric")(_detach(self._teacher_hook.pop()))
            y_feat = nnf.interpolate(
                t_logits, size=z.shape[-2:], mode="bilinear", align_corners=False
            ).argmax(1)
            # The metric loss is a set function of the batch (per-class caps, per-proxy sums): take it
            # over the global batch, identical on every process (identity in one process).
            z_all, y_all = self.comm.gather(z), self.comm.gather(y_feat)
            mask = balanced_pixel_mask(y_all, self.num_classes, cfg.metric.pixels_per_class, g_batch)
            proxies = self.metric.unit_proxies()
            if cfg.metric.loss == "proxy_anchor":
                l_metric = proxy_anchor_loss(z_all, y_all, proxies, mask, cfg.metric.alpha, cfg.metric.delta)
            else:
                l_metric = proxy_nca_loss(z_all, y_all, proxies, mask, cfg.metric.nca_scale)
            loss = loss + cfg.metric.weight * l_metric
            logs["loss_metric"] = l_metric.detach()
            r = reliability(z, proxies, y_feat, cfg.reliability.mode, cfg.reliability.scale, backend)
            weights = nnf.interpolate(
                r[:, None], size=pseudo.shape[-2:], mode="bilinear", align_corners=False
            )[:, 0]
            weights = weights.clamp_(0.0, 1.0)
        elif cfg.method == "confidence_weighted":
            weights = conf
        elif cfg.method == "threshold_st":
            # Keep the top-p% most confident pixels of the batch (the paper's Figure 1 baseline).
            thr = torch.quantile(
                conf.flatten().float()[:: max(1, conf.numel() // 65536)], 1 - cfg.optim.threshold_keep
            )
            labels = torch.where(conf >= thr, pseudo, torch.full_like(pseudo, IGNORE))
        logs["mean_weight"] = weights.mean()
        if step < self.warmup:  # the student waits until the weights mean something (decision 5)
            return loss, logs
        x = images
        if cfg.method == "stvm":
            x, labels, weights, mix = mocm(
                images, labels, weights, self.num_classes, patch=cfg.mix.patch, tau=cfg.mix.tau,
                fraction=cfg.mix.class_fraction, generator=g, backend=backend,
            )  # fmt: skip
            logs["mix_fraction"] = mix.float().mean()
        x = strong_augment(x, cfg.aug, g)
        s_logits = forward_logits(self._net("student"), normalize(x, self.mean, self.std))
        norm = cfg.reliability.normalize
        if norm == "class":  # counts over the global batch (256 numbers per process), like the metric loss
            counts = self.comm.gather(label_counts(labels)[None]).sum(0)
            weights = weights * class_balance(counts, self.num_classes)[labels.long()]
            norm = "valid"
        l_st = weighted_cross_entropy(s_logits, labels, weights, normalize=norm, backend=backend)
        logs["loss_st"] = l_st.detach()
        return loss + l_st, logs
