"""Numpy batches: fixed shapes, seeded reshuffles, equal epochs at any batch size, exact padding."""

from __future__ import annotations

import numpy as np
import pytest

from carclf.data.batches import TrainingBatches, epoch_images, padded_batches


def _batches(batch_size, images, seed=0, first_epoch=0, rows=50):
    return TrainingBatches(lambda positions, rng: positions.copy(), np.arange(rows), np.arange(rows) % 7, batch_size, images, seed,
                           first_epoch)


def _epoch(batches):
    return [batches[step] for step in range(len(batches))]


def test_every_batch_has_the_same_shape_and_labels_follow_their_rows():
    batches = _batches(8, epoch_images(50, [8]))
    assert len(batches) == 6 and batches.images_per_epoch == 48
    for x, y in _epoch(batches):
        assert x.shape == (8,) and (y == x % 7).all()


def test_an_epoch_holds_the_same_images_at_every_batch_size():
    images = epoch_images(50, [8, 16])
    assert images == 48
    assert _batches(8, images).images_per_epoch == _batches(16, images).images_per_epoch == 48


def test_passes_are_reshuffled_and_every_row_is_used():
    batches = _batches(10, 50)
    first = np.concatenate([x for x, _ in _epoch(batches)])
    batches.epoch += 1
    second = np.concatenate([x for x, _ in _epoch(batches)])
    assert sorted(first.tolist()) == sorted(second.tolist()) == list(range(50))
    assert first.tolist() != second.tolist()


def test_epochs_shorter_than_a_pass_continue_through_the_stream():
    batches = _batches(10, 30)  # 50 rows, 30 images per epoch: epoch 1 ends inside pass 0
    seen = []
    for _ in range(5):  # 150 images: exactly 3 passes
        seen += np.concatenate([x for x, _ in _epoch(batches)]).tolist()
        batches.epoch += 1
    for number in range(3):
        assert sorted(seen[number * 50:(number + 1) * 50]) == list(range(50))


def test_a_fixed_seed_gives_the_same_batches_and_a_restart_picks_up_mid_run():
    one, two = _batches(10, 50, seed=3), _batches(10, 50, seed=3)
    one.epoch = 1
    resumed = _batches(10, 50, seed=3, first_epoch=1)
    for (a, _), (b, _) in zip(_epoch(one), _epoch(resumed)):
        assert (a == b).all()
    assert _epoch(two)[0][0].tolist() != _epoch(_batches(10, 50, seed=4))[0][0].tolist()


def test_epoch_images_needs_a_full_batch():
    with pytest.raises(ValueError, match="cannot fill one batch of 64"):
        epoch_images(50, [64])
    assert epoch_images(50, [7, 8]) == 48  # no multiple of 56 fits: a multiple of the largest


def test_padded_batches_cover_each_position_once():
    batches = list(padded_batches(10, 4))
    assert [len(positions) for positions, _ in batches] == [4, 4, 4]
    assert [real for _, real in batches] == [4, 4, 2]
    assert np.concatenate([positions[:real] for positions, real in batches]).tolist() == list(range(10))
