"""Turning frames into tensors: resize, deterministic random crops, and batches.

Randomness is a pure function of ``(seed, step)`` so a resumed run draws exactly the batches an
uninterrupted one would (no RNG state to checkpoint), and nothing touches global RNGs. A process of
a multi-process run takes its slice of the global batch (B x world frames, drawn as one process with
that batch would), so N processes with batch B see exactly the frames and crops of one with N*B.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as nnf
from torch import Tensor

from stvm_sdk.boundary.frames import FrameRejected
from stvm_sdk.data.frames import Frame, load_frame
from stvm_sdk.data.images import IGNORE_INDEX
from stvm_sdk.errors import DataError


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator whose state depends only on ``(seed, step, stream)``."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step * 7919 + stream * 104_729) % (2**63 - 1))
    return g


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The frame order for one epoch (a permutation; depends only on seed and epoch)."""
    return torch.randperm(n, generator=step_generator(seed, epoch, stream=1))


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of the frames in batch ``step``: epochs are consecutive seeded permutations."""
    start = step * batch_size
    out: list[int] = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        order = epoch_order(n, seed, epoch)
        take = min(batch_size - len(out), n - offset)
        out += order[offset : offset + take].tolist()
    return out


def random_crop(
    img: Tensor, label: Tensor | None, crop: tuple[int, int], u: Tensor
) -> tuple[Tensor, Tensor | None]:
    """Crop ``[3,H,W]`` (and its label) at offset ``u`` (2 uniforms in [0,1) for top, left).

    Pads (label 255) if smaller than ``crop``. Offsets come from uniforms rather than from integer
    draws bounded by the frame size so that how much randomness a sample consumes never depends on
    its size: a process can skip the samples of the other processes without decoding them.
    """
    ch, cw = crop
    h, w = img.shape[-2:]
    if h < ch or w < cw:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        img = nnf.pad(img, (0, pw, 0, ph))
        if label is not None:
            label = nnf.pad(label, (0, pw, 0, ph), value=IGNORE_INDEX)
        h, w = img.shape[-2:]
    top = min(int(u[0] * (h - ch + 1)), h - ch)
    left = min(int(u[1] * (w - cw + 1)), w - cw)
    img = img[:, top : top + ch, left : left + cw]
    if label is not None:
        label = label[top : top + ch, left : left + cw]
    return img, label


class BatchLoader:
    """Loads training batches of random crops; decodes in a small thread pool (PIL releases the GIL).

    A frame that fails to decode during training (corrupt past its header) is replaced by the next
    frame in the folder, remembered in ``failed`` and passed to ``on_reject`` (``FrameFolder.reject``),
    so the run continues and the summary counts it. ``label_check(label, frame)`` vets each label as
    it is decoded (in the worker thread, not in the training step).
    """

    def __init__(
        self,
        frames: Sequence[Frame],
        *,
        on_reject: Callable[[FrameRejected], None] | None = None,
        label_check: Callable[[Tensor, Frame], Tensor] | None = None,
        batch_size: int,
        crop: tuple[int, int] | None,
        resize: tuple[int, int] | None,
        seed: int,
        workers: int = 2,
        with_labels: bool = False,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        """``shard=(rank, world)``: this process's slice of the global batch of ``batch_size * world``."""
        self.frames, self.batch_size, self.crop, self.resize, self.seed = (
            frames,
            batch_size,
            crop,
            resize,
            seed,
        )
        self.with_labels, self.on_reject, self.label_check = with_labels, on_reject, label_check
        self.rank, self.world = shard
        self.failed: set[int] = set()
        # Decoder threads run small torch ops (to float, resize). Left at the default, each thread
        # gets its own OpenMP team that competes with the training step's for the cores, and every
        # later forward/backward runs markedly slower. One intra-op thread each avoids that.
        self._pool = ThreadPoolExecutor(
            max_workers=max(1, workers), initializer=torch.set_num_threads, initargs=(1,)
        )

    def _load(self, index: int) -> tuple[Tensor, Tensor | None]:
        for k in range(len(self.frames)):
            i = (index + k) % len(self.frames)
            if i in self.failed:
                continue
            try:
                img, label = load_frame(self.frames[i], self.resize, with_label=self.with_labels)
            except FrameRejected as exc:
                self.failed.add(i)
                if self.on_reject is not None:
                    self.on_reject(exc)
                continue
            if label is not None and self.label_check is not None:
                label = self.label_check(label, self.frames[i])
            return img, label
        raise DataError("every frame failed to decode: check the folder's files")

    def batch(self, step: int) -> Tensor:
        """The images of batch ``step`` as ``[B,3,h,w]`` in [0,1] (crops, then a seeded flip)."""
        return self.labelled_batch(step)[0]

    def labelled_batch(self, step: int) -> tuple[Tensor, Tensor | None]:
        """Images ``[B,3,h,w]`` and, with ``with_labels``, labels ``[B,h,w]`` (same crops and flips)."""
        idx = batch_indices(len(self.frames), self.batch_size * self.world, self.seed, step)
        # Crop and flip draws for the whole global batch (3 per sample), then this process's slice.
        u = torch.rand((len(idx), 3), generator=step_generator(self.seed, step, stream=2))
        lo = self.rank * self.batch_size
        idx, u = idx[lo : lo + self.batch_size], u[lo : lo + self.batch_size]
        pairs = list(self._pool.map(self._load, idx))
        images, labels = [], []
        for (img, label), draws in zip(pairs, u, strict=True):
            if self.crop is not None:
                img, label = random_crop(img, label, self.crop, draws[:2])
            if bool(draws[2] < 0.5):
                img = img.flip(-1)
                label = label.flip(-1) if label is not None else None
            images.append(img)
            labels.append(label)
        if len({tuple(t.shape) for t in images}) > 1:
            raise DataError("frames differ in size: set a crop (--crop HxW) or a resize (--resize HxW)")
        if not self.with_labels:
            return torch.stack(images), None
        if any(lab is None for lab in labels):
            raise DataError("a training frame has no label: every frame needs one for supervised training")
        return torch.stack(images), torch.stack(labels)  # type: ignore[arg-type]

    def close(self) -> None:
        self._pool.shutdown(wait=False)
