"""The PatchMix operation and its soft targets, as pure functions of tensors.

Semantics (recipes.md, "The PatchMix operation"; published implementation):
- Images are mixed in pixel space, before the patch embedding, in squares of the ViT patch size,
  so every token of a mixed image is a whole token of one source image.
- One random permutation of the T patch positions is shared by the whole per-device batch. The
  permuted positions are cut into m groups of S = T // m; the T - m*S leftover positions keep the
  image's own patches.
- Mixed image g takes group j (j = 0..m-1) from image (g + j) mod B: its partners are its batch
  neighbours on the same device.
- Targets index the keys gathered from all ranks, so columns are offset by rank * B.
Everything is index arithmetic: no loop over images, any device, any m >= 1.
"""
from __future__ import annotations

import torch


def group_offsets(num_tokens: int, num_mixed: int, generator: torch.Generator,
                  device: torch.device | None = None) -> torch.Tensor:
    """Which batch neighbour supplies each token position.

    Returns offsets: (T,) long, with offsets[t] = j when position t falls in group j of the shared
    random permutation, and 0 for the T - m * (T // m) leftover positions. The token at position t
    of mixed image g comes from image (g + offsets[t]) mod B.
    """
    if num_mixed < 1:
        raise ValueError(f"num_mixed must be >= 1, got {num_mixed}")
    if num_mixed > num_tokens:
        raise ValueError(f"cannot cut {num_tokens} tokens into {num_mixed} non-empty groups")
    permutation = torch.randperm(num_tokens, generator=generator, device=generator.device)
    group_size = num_tokens // num_mixed
    offsets = torch.zeros(num_tokens, dtype=torch.long, device=generator.device)
    offsets[permutation[: num_mixed * group_size]] = torch.arange(
        num_mixed, device=generator.device).repeat_interleave(group_size)
    if device is None or torch.device(device) == offsets.device:
        return offsets
    if offsets.device.type == "cpu" and torch.device(device).type == "cuda":
        # A copy from pinned memory is asynchronous: no host synchronisation inside the step.
        return offsets.pin_memory().to(device, non_blocking=True)
    return offsets.to(device)


def to_patches(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images: (B, C, H, W) -> patches: (B, T, C, p, p), row-major over the patch grid."""
    batch, channels, height, width = images.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"patch size {patch_size} does not divide the image size {height}x{width}")
    rows, cols = height // patch_size, width // patch_size
    patches = images.reshape(batch, channels, rows, patch_size, cols, patch_size)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, rows * cols, channels, patch_size, patch_size)


def from_patches(patches: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of `to_patches`: (B, T, C, p, p) -> (B, C, H, W)."""
    batch, _, channels, patch_size, _ = patches.shape
    rows, cols = height // patch_size, width // patch_size
    images = patches.reshape(batch, rows, cols, channels, patch_size, patch_size)
    return images.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height, width)


def source_indices(batch_size: int, offsets: torch.Tensor) -> torch.Tensor:
    """(T,) offsets -> (B, T) index of the source image of every token of every mixed image."""
    rows = torch.arange(batch_size, device=offsets.device).unsqueeze(1)
    return (rows + offsets.unsqueeze(0)) % batch_size


def patch_mix(images: torch.Tensor, num_mixed: int, patch_size: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each image with its m - 1 next batch neighbours at patch level.

    Args:
        images: (B, C, H, W), any device and dtype.
        num_mixed: m >= 1; m = 1 returns the images unchanged.
        patch_size: the ViT patch size (it must divide H and W).
        generator: draws the shared permutation (on its own device; the result is moved).
    Returns:
        mixed: (B, C, H, W); offsets: (T,) long, see `group_offsets`.
    """
    batch, _, height, width = images.shape
    num_tokens = (height // patch_size) * (width // patch_size)
    offsets = group_offsets(num_tokens, num_mixed, generator, images.device)
    if num_mixed == 1:
        return images, offsets
    patches = to_patches(images, patch_size)
    sources = source_indices(batch, offsets)
    positions = torch.arange(num_tokens, device=images.device).unsqueeze(0)
    return from_patches(patches[sources, positions], height, width), offsets


def _scatter_targets(batch_size: int, shifts: torch.Tensor, weights: torch.Tensor, rank: int,
                     world_size: int, smoothing: float) -> torch.Tensor:
    """Dense (B, world*B) targets with weights[i] added at column (g + shifts[i]) mod B + rank*B."""
    device = weights.device
    rows = torch.arange(batch_size, device=device).unsqueeze(1).expand(-1, len(shifts))
    columns = (rows + shifts.unsqueeze(0)) % batch_size + rank * batch_size
    targets = torch.zeros(batch_size, world_size * batch_size, device=device)
    # scatter_add, not scatter: when B < 2m - 1 two shifts land on the same image and both count.
    targets.scatter_add_(1, columns, weights.unsqueeze(0).expand(batch_size, -1).contiguous())
    if smoothing:
        targets = targets * (1.0 - smoothing) + smoothing / targets.shape[1]
    return targets


def origin_targets(batch_size: int, rank: int = 0, world_size: int = 1,
                   device: torch.device | None = None, smoothing: float = 0.0) -> torch.Tensor:
    """(B, world*B): image g of this rank matches key rank*B + g (plain contrast); one-hot, or
    1 - s + s/N on the positive and s/N elsewhere with smoothing s (N = world*B, loss.origin_smoothing)."""
    return _scatter_targets(batch_size, torch.zeros(1, dtype=torch.long, device=device),
                            torch.ones(1, device=device), rank, world_size, smoothing)


def mix_to_origin_targets(batch_size: int, num_mixed: int, rank: int = 0, world_size: int = 1,
                          smoothing: float = 0.0, device: torch.device | None = None) -> torch.Tensor:
    """(B, world*B): mixed image g weighs 1/m on each of its sources g, g+1, ..., g+m-1 (mod B).

    Each source counts 1/m whatever the leftover positions (published convention).
    """
    shifts = torch.arange(num_mixed, device=device)
    weights = torch.full((num_mixed,), 1.0 / num_mixed, device=device)
    return _scatter_targets(batch_size, shifts, weights, rank, world_size, smoothing)


def mix_to_mix_targets(batch_size: int, num_mixed: int, rank: int = 0, world_size: int = 1,
                       smoothing: float = 0.0, device: torch.device | None = None) -> torch.Tensor:
    """(B, world*B) between the mixed batches of two views: mixed images g and h = g + d share
    m - |d| source groups, so the weight at shift d in -(m-1)..(m-1) is (m - |d|) / m^2
    (= (1 - |m - i - 1| / m) / m for i = 0..2m-2; for m = 2: 1/4, 1/2, 1/4). Rows sum to 1.
    """
    shifts = torch.arange(-(num_mixed - 1), num_mixed, device=device)
    weights = (num_mixed - shifts.abs()).float() / num_mixed**2
    return _scatter_targets(batch_size, shifts, weights, rank, world_size, smoothing)
