"""The PatchMix operation and its targets against independent, loop-based references."""
from __future__ import annotations

import itertools

import pytest
import torch

from pretrain.patchmix import (group_offsets, mix_to_mix_targets, mix_to_origin_targets,
                               origin_targets, patch_mix)


def naive_mix(images: torch.Tensor, offsets: torch.Tensor, patch: int) -> torch.Tensor:
    """Per image, per patch position: copy the patch of the designated source image."""
    batch, _, height, width = images.shape
    columns = width // patch
    mixed = torch.empty_like(images)
    for g in range(batch):
        for t in range(offsets.numel()):
            row, col = divmod(t, columns)
            source = (g + int(offsets[t])) % batch
            window = (slice(None), slice(row * patch, (row + 1) * patch), slice(col * patch, (col + 1) * patch))
            mixed[g][window] = images[source][window]
    return mixed


def expected_offsets(num_tokens: int, num_mixed: int, seed: int) -> torch.Tensor:
    """Offsets from the recipe's words: cut the shared permutation into m groups of T // m."""
    permutation = torch.randperm(num_tokens, generator=torch.Generator().manual_seed(seed))
    size = num_tokens // num_mixed
    offsets = torch.zeros(num_tokens, dtype=torch.long)
    for group in range(num_mixed):
        for position in permutation[group * size:(group + 1) * size]:
            offsets[position] = group
    return offsets


@pytest.mark.parametrize("batch,num_mixed,image,patch", [
    (5, 1, 8, 2),    # m = 1: identity
    (5, 2, 8, 2),    # T = 16 divisible by m
    (6, 3, 8, 2),    # T = 16 not divisible by 3: one leftover position
    (4, 4, 12, 4),   # T = 9, m = 4: one leftover
    (3, 3, 6, 2),    # B = m: partners wrap around the batch
    (2, 3, 4, 2),    # B < m: an image is its own partner
    (7, 5, 10, 2),   # T = 25, m = 5
])
def test_mix_equals_naive_reference(batch, num_mixed, image, patch):
    images = torch.randn(batch, 3, image, image)
    mixed, offsets = patch_mix(images, num_mixed, patch, torch.Generator().manual_seed(7))
    num_tokens = (image // patch) ** 2
    assert torch.equal(offsets, expected_offsets(num_tokens, num_mixed, seed=7))
    assert torch.equal(mixed, naive_mix(images, offsets, patch))
    if num_mixed == 1:
        assert torch.equal(mixed, images)


def test_every_token_comes_from_its_designated_source():
    """Images whose pixels encode (image index, patch position): read the provenance back."""
    batch, num_mixed, patch, image = 6, 3, 2, 10
    grid = image // patch
    num_tokens = grid * grid
    identity = torch.arange(batch, dtype=torch.float).view(batch, 1, 1, 1).expand(batch, 1, image, image)
    position = torch.arange(num_tokens, dtype=torch.float).view(grid, grid)
    position = position.repeat_interleave(patch, 0).repeat_interleave(patch, 1).expand(batch, 1, image, image)
    images = torch.cat([identity, position, torch.zeros(batch, 1, image, image)], dim=1)
    mixed, offsets = patch_mix(images, num_mixed, patch, torch.Generator().manual_seed(3))
    size = num_tokens // num_mixed
    counts = torch.bincount(offsets, minlength=num_mixed)
    assert counts[1:].tolist() == [size] * (num_mixed - 1)
    assert counts[0] == size + num_tokens - num_mixed * size  # leftovers stay with the image itself
    for g in range(batch):
        for t in range(num_tokens):
            row, col = divmod(t, grid)
            token = mixed[g, :, row * patch:(row + 1) * patch, col * patch:(col + 1) * patch]
            assert torch.all(token[0] == (g + offsets[t]) % batch)  # designated source image
            assert torch.all(token[1] == t)  # tokens never move position


def test_permutation_shared_and_reproducible():
    images = torch.randn(4, 3, 8, 8)
    a, offsets_a = patch_mix(images, 2, 2, torch.Generator().manual_seed(11))
    b, offsets_b = patch_mix(images, 2, 2, torch.Generator().manual_seed(11))
    assert torch.equal(a, b) and torch.equal(offsets_a, offsets_b)
    assert offsets_a.shape == (16,)  # one offset per position, shared by all images


def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="num_mixed"):
        group_offsets(16, 0, torch.Generator())
    with pytest.raises(ValueError, match="non-empty groups"):
        group_offsets(4, 5, torch.Generator())
    with pytest.raises(ValueError, match="does not divide"):
        patch_mix(torch.randn(2, 3, 10, 10), 2, 3, torch.Generator())


def source_lists(batch: int, num_mixed: int) -> list[list[int]]:
    """Source image of each group of each mixed image, from the recipe: group j of g is g + j."""
    return [[(g + j) % batch for j in range(num_mixed)] for g in range(batch)]


@pytest.mark.parametrize("batch,num_mixed,rank,world", [
    (8, 1, 0, 1), (8, 2, 0, 1), (8, 3, 1, 2), (6, 4, 2, 3), (3, 3, 0, 1), (2, 3, 1, 2), (5, 2, 0, 1),
])
def test_targets_equal_brute_force_counting(batch, num_mixed, rank, world):
    sources = source_lists(batch, num_mixed)
    to_origin = torch.zeros(batch, world * batch)
    to_mix = torch.zeros(batch, world * batch)
    for g in range(batch):
        for s in sources[g]:
            to_origin[g, rank * batch + s] += 1 / num_mixed
        for h in range(batch):
            shared = sum(a == b for a, b in itertools.product(sources[g], sources[h]))
            to_mix[g, rank * batch + h] = shared / num_mixed**2
    got_origin = mix_to_origin_targets(batch, num_mixed, rank, world)
    got_mix = mix_to_mix_targets(batch, num_mixed, rank, world)
    torch.testing.assert_close(got_origin, to_origin)
    torch.testing.assert_close(got_mix, to_mix)
    for targets in (got_origin, got_mix, origin_targets(batch, rank, world)):
        torch.testing.assert_close(targets.sum(dim=1), torch.ones(batch))
        outside = torch.ones(world * batch, dtype=torch.bool)
        outside[rank * batch:(rank + 1) * batch] = False
        assert torch.all(targets[:, outside] == 0)  # only this rank's keys are targets


def test_mix_to_mix_weights_match_recipe_formula():
    """(1 - |m - i - 1| / m) / m for i = 0..2m-2 around the diagonal; m = 2 gives .25 .5 .25."""
    for m in (2, 3, 4):
        row = mix_to_mix_targets(16, m)[8]
        expected = [(1 - abs(m - i - 1) / m) / m for i in range(2 * m - 1)]
        torch.testing.assert_close(row[8 - m + 1: 8 + m], torch.tensor(expected))
    torch.testing.assert_close(mix_to_mix_targets(8, 2)[3, 2:5], torch.tensor([0.25, 0.5, 0.25]))


def test_smoothing_keeps_rows_normalised():
    targets = mix_to_origin_targets(8, 2, smoothing=0.1)
    torch.testing.assert_close(targets.sum(1), torch.ones(8))
    assert targets.min() == pytest.approx(0.1 / 8)
