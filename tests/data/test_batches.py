"""Batches are a pure function of (seed, step): what makes resume exact."""

from __future__ import annotations

from pathlib import Path

import torch

from stvm_sdk.data import scan_frames
from stvm_sdk.data.batches import BatchLoader, batch_indices


def test_batch_indices_cover_each_epoch_once() -> None:
    idx = [i for s in range(5) for i in batch_indices(10, 2, seed=3, step=s)]
    assert sorted(idx) == list(range(10))
    assert batch_indices(10, 4, 3, 7) == batch_indices(10, 4, 3, 7)
    assert batch_indices(10, 4, 3, 7) != batch_indices(10, 4, 4, 7)


def test_batches_are_reproducible_and_labels_follow_crops(frames: tuple[Path, Path]) -> None:
    folder = scan_frames(*frames)
    a = BatchLoader(folder.frames, batch_size=3, crop=(16, 16), resize=None, seed=0, with_labels=True)
    b = BatchLoader(folder.frames, batch_size=3, crop=(16, 16), resize=None, seed=0, with_labels=True)
    x1, y1 = a.labelled_batch(4)
    x2, y2 = b.labelled_batch(4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (3, 3, 16, 16) and y1.shape == (3, 16, 16)
    a.close()
    b.close()


def test_decoder_threads_use_one_intra_op_thread(frames: tuple[Path, Path]) -> None:
    """Torch ops in the decoder threads must not get OpenMP teams of their own: on a 2-core machine
    they compete with the training step for the cores and slow every step after the first batch. The
    caller's setting stays."""
    folder = scan_frames(*frames)
    before = torch.get_num_threads()
    loader = BatchLoader(folder.frames, batch_size=2, crop=(16, 16), resize=None, seed=0, workers=2)
    try:
        loader.batch(0)
        in_workers = {loader._pool.submit(torch.get_num_threads).result() for _ in range(4)}
    finally:
        loader.close()
    assert in_workers == {1}
    assert torch.get_num_threads() == before
