"""Which per-pixel signals find wrong pseudo-labels, and which labelling rules make fewer: forward passes
only, seconds per block instead of the hours of an accuracy table.

    python benchmarks/signals.py --quick                 # lraspp on `target`, the quick plan's source model
    python benchmarks/signals.py --arch A --domain D     # a block of the full plan
    python benchmarks/signals.py --quick --run RUN_DIR   # a finished run: its teacher (and metric network)

The model is the plan's source model after target BatchNorm re-estimation (decision 0: where every
method starts, "step 0"), or with ``--run`` a finished run's deliverable teacher. On the labelled
``val`` and ``test`` splits it measures:

- the pseudo-label accuracy of each labelling rule: ``argmax`` (the teacher's), ``flip`` (argmax of the
  prediction averaged with the horizontally flipped one), ``centroid`` (argmax of softmax x the
  centroid posterior, ProDA's rectification);
- for each signal, AUROC and AUPR of the errors at ranking the argmax pseudo-labels (right above wrong;
  :mod:`stvm_sdk.eval.error_detection`): ``confidence`` (max-softmax), ``margin`` (top-1 - top-2),
  ``neg_entropy``, ``flip_agreement``, ``centroid`` (posterior of the pseudo-class from the distance of
  the logit conv's input feature to soft-label-weighted class centroids of the split; softmax of
  -(d - d_min)), ``confidence_x_centroid``, ``source_agreement`` (the un-adapted source model predicts
  the same class) and, for an STvM run, ``reliability`` (its metric network's), its product with
  confidence, and ``metric_centroid``: the posterior of the pseudo-class against soft-label-weighted
  class centroids of the metric network's embeddings instead of its learned proxies (and x confidence),
  and ``metric_gamma<g>``: the posterior against the run's proxies at softmax scale g, alone and combined
  as ``conf^a * metric^(1-a)`` (``reliability.mode = "combined"``, ``confidence_power`` a);
- ``logistic``: a logistic combination of every signal, fitted on ``val`` and scored on ``test``.

Writes benchmarks/results/signals_<arch>_<domain>_<model>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as nnf
from accuracy import Plan, source_model  # benchmarks/ is on sys.path when this runs as a script
from torch import Tensor

from stvm_sdk import load_model, load_run
from stvm_sdk.data import scan_frames
from stvm_sdk.data.frames import FrameFolder
from stvm_sdk.eval.error_detection import aupr_errors, auroc
from stvm_sdk.methods.parts.norm import reestimate_bn
from stvm_sdk.methods.parts.pseudo import detach_features
from stvm_sdk.models import SegModel, forward_logits, normalize
from stvm_sdk.models.contract import capture_features
from stvm_sdk.synthetic.cache import ensure_domain

RESULTS = Path(__file__).resolve().parent / "results"
IGNORE = 255
STRIDE = 4  # every 4th pixel in each direction is scored (1/16 of the pixels)
SCALES = (4.0, 16.0)  # softmax scales of the metric posterior tried for a finished run
POWERS = (0.5, 0.75)  # confidence's share a in conf^a * metric^(1-a)


def load_split(folder: FrameFolder, size: tuple[int, int] | None) -> tuple[Tensor, Tensor]:
    """Images ``[N,3,H,W]`` in [0,1] and labels ``[N,H,W]`` of the labelled frames."""
    images, labels = [], []
    for frame in folder.labelled:
        out = folder.load(frame, size, with_label=True)
        if out is not None and out[1] is not None:
            images.append(out[0])
            labels.append(out[1])
    return torch.stack(images), torch.stack(labels)


def _logit_conv(model: SegModel) -> torch.nn.Module:
    """The last conv of the classifier head with K outputs: its input is the pixel's feature."""
    assert model.classifier is not None
    head = model.module.get_submodule(model.classifier)
    convs = [
        m for m in head.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == model.num_classes
    ]
    if not convs:
        raise ValueError(f"the classifier {model.classifier} has no conv with {model.num_classes} outputs")
    return convs[-1]


@torch.no_grad()
def _forward(model: SegModel, x: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``[B,K,H,W]`` and the input features ``[B,C,h,w]`` of the logit conv for images in [0,1]."""
    seen: list[Tensor] = []
    hook = _logit_conv(model).register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    try:
        logits = forward_logits(model.module, normalize(x, model.mean, model.std)).float()
    finally:
        hook.remove()
    return logits, seen[-1].float()


@torch.no_grad()
def class_centroids(model: SegModel, images: Tensor, batch: int = 8) -> Tensor:
    """``[K,C]``: soft-label-weighted means of the logit conv's input features over ``images``."""
    sums: Tensor | None = None
    weights: Tensor | None = None
    for i in range(0, len(images), batch):
        logits, feats = _forward(model, images[i : i + batch])
        p = nnf.interpolate(logits, size=feats.shape[-2:], mode="bilinear", align_corners=False).softmax(1)
        s = torch.einsum("bkhw,bchw->kc", p, feats)
        w = p.sum((0, 2, 3))
        sums, weights = (s, w) if sums is None else (sums + s, weights + w)  # type: ignore[operator]
    assert sums is not None and weights is not None
    return sums / weights.clamp_min(1e-6)[:, None]


def _metric_head(result: Any) -> Any:
    """The run's metric network (STvM), or None."""
    return None if result is None else result.extras.get("metric")


@torch.no_grad()
def _embed(model: SegModel, metric: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``[B,K,H,W]`` and the metric network's unit embeddings ``[B,D,h,w]`` of images in [0,1]."""
    assert model.classifier is not None
    with capture_features(model.module, model.classifier) as hook:
        logits = forward_logits(model.module, normalize(x, model.mean, model.std)).float()
        z = metric.eval()(detach_features(hook.pop())).float()
    return logits, z


@torch.no_grad()
def metric_centroids(model: SegModel, metric: Any, images: Tensor, batch: int = 8) -> Tensor:
    """``[K,D]`` unit vectors: soft-label-weighted means of the metric network's embeddings over
    ``images`` (what EMA class centroids as proxies would converge to on these frames)."""
    sums = None
    for i in range(0, len(images), batch):
        logits, z = _embed(model, metric, images[i : i + batch])
        p = nnf.interpolate(logits, size=z.shape[-2:], mode="bilinear", align_corners=False).softmax(1)
        s = torch.einsum("bkhw,bdhw->kd", p, z)
        sums = s if sums is None else sums + s
    assert sums is not None
    return nnf.normalize(sums, dim=1)


def _proxy_posterior(z: Tensor, proxies: Tensor, labels: Tensor, scale: float, size: Any) -> Tensor:
    """Softmax over scaled cosine similarities to ``proxies``, of ``labels``' class, at ``size``."""
    post = (scale * torch.einsum("bdhw,kd->bkhw", z, proxies)).softmax(1)
    post = nnf.interpolate(post, size=size, mode="bilinear", align_corners=False)
    return post.gather(1, labels[:, None])[:, 0]


@torch.no_grad()
def pixel_signals(
    model: SegModel,
    source: SegModel,
    images: Tensor,
    centroids: Tensor,
    result: Any = None,
    z_centroids: Tensor | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(labelling rules ``{name: [B,H,W]}``, signals ``{name: [B,H,W]}``) for one batch of images."""
    logits, feats = _forward(model, images)
    prob = logits.softmax(1)
    top2 = prob.topk(2, dim=1).values
    conf, pseudo = prob.max(1)
    flipped = _forward(model, images.flip(-1))[0].flip(-1).softmax(1)
    mean_prob = 0.5 * (prob + flipped)
    d = torch.cdist(feats.permute(0, 2, 3, 1).flatten(1, 2), centroids[None].expand(len(feats), -1, -1))
    post = (-(d - d.min(-1, keepdim=True).values)).softmax(-1)  # [B,hw,K]
    post = post.transpose(1, 2).reshape(len(feats), -1, *feats.shape[-2:])
    post = nnf.interpolate(post, size=logits.shape[-2:], mode="bilinear", align_corners=False)
    post_pseudo = post.gather(1, pseudo[:, None])[:, 0]
    src = forward_logits(source.module, normalize(images, source.mean, source.std)).argmax(1)
    logp = prob.clamp_min(1e-12).log()
    rules = {"argmax": pseudo, "flip": mean_prob.argmax(1), "centroid": (prob * post).argmax(1)}
    signals = {
        "confidence": conf,
        "margin": top2[:, 0] - top2[:, 1],
        "neg_entropy": (prob * logp).sum(1),
        "flip_agreement": (flipped.argmax(1) == pseudo).float()
        + 0.5 * flipped.gather(1, pseudo[:, None])[:, 0],
        "centroid": post_pseudo,
        "confidence_x_centroid": conf * post_pseudo,
        "source_agreement": (src == pseudo).float() + 0.5 * conf,
    }
    if result is not None and result.has_pixel_weights:
        rel = result.pixel_weights(images)[1]
        signals["reliability"] = rel
        signals["confidence_x_reliability"] = conf * rel
    metric = _metric_head(result)
    if metric is not None and z_centroids is not None:
        _, z = _embed(model, metric, images)
        own = result.config.methods.get(result.config.method, {})
        scale = float(own.get("reliability", {}).get("scale", 16.0))
        m_post = _proxy_posterior(z, z_centroids, pseudo, scale, logits.shape[-2:])
        signals["metric_centroid"] = m_post
        signals["confidence_x_metric_centroid"] = conf * m_post
        # the run's own proxies at other softmax scales gamma, alone and as conf^a * metric^(1-a)
        for gamma in SCALES:
            post = _proxy_posterior(z, metric.unit_proxies(), pseudo, gamma, logits.shape[-2:])
            signals[f"metric_gamma{gamma:g}"] = post
            for a in POWERS:
                signals[f"conf^{a:g}_x_metric_gamma{gamma:g}"] = conf**a * post ** (1 - a)
    return rules, signals


def measure(
    model: SegModel, source: SegModel, images: Tensor, labels: Tensor, result: Any = None, batch: int = 8
) -> tuple[dict[str, float], dict[str, Tensor], Tensor]:
    """Pseudo-label accuracy (%) per rule, and the sampled signals and correctness of the argmax labels."""
    centroids = class_centroids(model, images, batch)
    metric = _metric_head(result)
    z_centroids = metric_centroids(model, metric, images, batch) if metric is not None else None
    right: dict[str, int] = {}
    total = 0
    sig: dict[str, list[Tensor]] = {}
    ok: list[Tensor] = []
    for i in range(0, len(images), batch):
        x, y = images[i : i + batch], labels[i : i + batch]
        rules, signals = pixel_signals(model, source, x, centroids, result, z_centroids)
        valid = y != IGNORE
        total += int(valid.sum())
        for name, lab in rules.items():
            right[name] = right.get(name, 0) + int(((lab == y) & valid).sum())
        keep = valid[:, ::STRIDE, ::STRIDE]
        ok.append((rules["argmax"] == y)[:, ::STRIDE, ::STRIDE][keep])
        for name, s in signals.items():
            sig.setdefault(name, []).append(s[:, ::STRIDE, ::STRIDE][keep].double())
    accuracy = {name: 100.0 * n / max(total, 1) for name, n in right.items()}
    return accuracy, {k: torch.cat(v) for k, v in sig.items()}, torch.cat(ok)


def fit_logistic(signals: dict[str, Tensor], correct: Tensor, steps: int = 200) -> dict[str, Any]:
    """A logistic model of correctness on standardised signals (LBFGS), as a plain dict."""
    names = sorted(signals)
    x = torch.stack([signals[n] for n in names], 1)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-9)
    z = (x - mean) / std
    w = torch.zeros(len(names) + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")
    y = correct.double()

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nnf.binary_cross_entropy_with_logits(z @ w[:-1] + w[-1], y) + 1e-4 * w[:-1].square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {"names": names, "mean": mean, "std": std, "w": w.detach()}


def logistic_score(model: dict[str, Any], signals: dict[str, Tensor]) -> Tensor:
    x = torch.stack([signals[n] for n in model["names"]], 1)
    return ((x - model["mean"]) / model["std"]) @ model["w"][:-1] + model["w"][-1]


def signal_table(
    model: SegModel,
    source: SegModel,
    val: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    result: Any = None,
) -> dict[str, Any]:
    """Everything the report shows for one model: rules' accuracy and each signal's error detection on
    both splits, and the logistic combination fitted on ``val``, scored on ``test``."""
    out: dict[str, Any] = {}
    fitted = None
    for split, (images, labels) in (("val", val), ("test", test)):
        accuracy, signals, correct = measure(model, source, images, labels, result)
        if fitted is None:
            fitted = fit_logistic(signals, correct)
        signals["logistic"] = logistic_score(fitted, signals)
        out[split] = {
            "pixels_scored": int(correct.numel()),
            "pseudo_label_accuracy": accuracy,
            "signals": {
                name: {"auroc": auroc(s, correct), "aupr_errors": aupr_errors(s, correct)}
                for name, s in signals.items()
            },
        }
    out["logistic_weights"] = (
        dict(zip(fitted["names"], fitted["w"][:-1].tolist(), strict=True)) if fitted else {}
    )
    return out


def _models(
    plan: Plan, arch: str, domain: str, cache: Path, run: Path | None
) -> tuple[SegModel, SegModel, Any]:
    """(the model whose pseudo-labels are judged, the un-adapted source model, the run or None)."""
    source = load_model(source_model(plan, arch, cache))
    source.module.eval()
    if run is not None:
        result = load_run(run)
        assert result.teacher is not None, f"{run} has no teacher: signals judge a teacher's pseudo-labels"
        result.teacher.module.eval()
        return result.teacher, source, result
    model = source.clone()
    train = scan_frames(ensure_domain(plan.spec(domain, "train"), cache))
    images = torch.stack([x[0] for f in train.frames[:200] if (x := train.load(f, plan.size)) is not None])
    reestimate_bn(
        model.module, (normalize(images[i : i + 8], model.mean, model.std) for i in range(0, len(images), 8))
    )
    model.module.eval()
    return model, source, None


def write_markdown(table: dict[str, Any], path: Path, header: list[str]) -> None:
    lines = [
        *header,
        "",
        "## Pseudo-label accuracy (%) by labelling rule",
        "",
        "| rule | val | test |",
        "|---|---|---|",
    ]
    for rule in table["test"]["pseudo_label_accuracy"]:
        v, t = table["val"]["pseudo_label_accuracy"][rule], table["test"]["pseudo_label_accuracy"][rule]
        lines.append(f"| {rule} | {v:.2f} | {t:.2f} |")
    lines += ["", "## Ranking wrong argmax pseudo-labels (higher is better)", ""]
    lines += [
        "| signal | AUROC val | AUROC test | AUPR errors val | AUPR errors test |",
        "|---|---|---|---|---|",
    ]
    for name in table["test"]["signals"]:
        v, t = table["val"]["signals"][name], table["test"]["signals"][name]
        note = " (fitted on val)" if name == "logistic" else ""
        cells = [v["auroc"], t["auroc"], v["aupr_errors"], t["aupr_errors"]]
        lines.append(f"| {name}{note} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    weights = ", ".join(f"{k} {v:+.2f}" for k, v in table["logistic_weights"].items())
    lines += ["", f"Logistic weights (standardised signals): {weights}.", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the quick plan (its own smaller source model)")
    ap.add_argument("--arch", default="lraspp_mobilenet_v3_large")
    ap.add_argument("--domain", default="target")
    ap.add_argument("--cache", type=Path, default=Path(".stvm_cache"))
    ap.add_argument(
        "--run", type=Path, default=None, help="a finished run: judge its teacher's pseudo-labels"
    )
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    plan = Plan.quick() if args.quick else Plan()
    model, source, result = _models(plan, args.arch, args.domain, args.cache, args.run)
    splits = []
    for split in ("val", "test"):
        root = ensure_domain(plan.spec(args.domain, split), args.cache)
        splits.append(load_split(scan_frames(root, root), plan.size))
    table = signal_table(model, source, splits[0], splits[1], result)
    tag = "run" if args.run else "step0"
    name = f"signals_{args.arch}_{args.domain}_{tag}{'_quick' if args.quick else ''}"
    seconds = time.perf_counter() - t0
    command = " ".join(sys.argv[1:] if argv is None else argv)
    header = [
        f"# Error signals of pseudo-labels: {args.arch} on `{args.domain}`, "
        + (
            f"the teacher of {args.run}"
            if args.run
            else "the source model after target BN re-estimation (step 0)"
        ),
        "",
        f"Machine: {platform.machine()}, torch {torch.__version__}; {seconds:.0f} s. "
        f"Frames: {len(splits[0][0])} `val`, {len(splits[1][0])} `test` at {plan.size[0]}x{plan.size[1]}; "
        f"every {STRIDE}th pixel in each direction scored. Command: `python benchmarks/signals.py {command}`",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_markdown(table, RESULTS / f"{name}.md", header)
    (RESULTS / f"{name}.json").write_text(json.dumps({**table, "seconds": round(seconds, 1)}, indent=1))
    print((RESULTS / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
