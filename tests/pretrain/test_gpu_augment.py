"""The batched (GPU) augmentation path: Table 10's distributions and agreement with the PIL path."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter, ImageOps

from pretrain.gpu_augment import ViewParameters, augment, sample_parameters
from tests.tolerances import reordering_tolerance

OPERATIONS = ("brightness", "contrast", "saturation", "hue")


def photo(seed: int, size: int = 48) -> Image.Image:
    """A smooth colourful image (blur and hue behave as on photographs, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(6, 6, 3)).astype(np.uint8)
    return Image.fromarray(coarse).resize((size, size), Image.BICUBIC)


def pil_reference(image: Image.Image, p: ViewParameters, i: int, only: str | None = None) -> np.ndarray:
    """The same parameters through torchvision's PIL functions, in the same order (`only`: that one)."""
    if p.jitter[i]:
        for operation in p.order[i].tolist():
            if only is not None and OPERATIONS[operation] != only:
                continue
            name = OPERATIONS[operation]
            factor = float(getattr(p, name)[i])
            image = getattr(TF, f"adjust_{name}")(image, factor)
    if p.grayscale[i]:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    if p.blur[i]:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(p.sigma[i])))
    if p.solarize[i]:
        image = ImageOps.solarize(image, 128)
    return np.asarray(image).astype(np.float32)


def _parameters(batch, **fixed) -> ViewParameters:
    p = sample_parameters(batch, 0.0, 0.0, torch.Generator().manual_seed(7))
    for key, value in fixed.items():
        setattr(p, key, value)
    return p


@pytest.mark.parametrize("blur", [False, True])
def test_matches_the_pil_path_for_fixed_parameters(blur):
    batch = 12
    images = [photo(i) for i in range(batch)]
    batch_tensor = torch.stack([TF.pil_to_tensor(im) for im in images])
    p = _parameters(batch, jitter=torch.ones(batch, dtype=torch.bool), blur=torch.full((batch,), blur),
                    grayscale=torch.arange(batch) % 4 == 0, solarize=torch.arange(batch) % 3 == 0)
    ours = augment(batch_tensor, p, normalize=False).numpy().transpose(0, 2, 3, 1) * 255
    for i, image in enumerate(images):
        difference = np.abs(ours[i] - pil_reference(image, p, i))
        # PIL rounds to 8 bits after every operation, rotates hue in 8-bit HSV and approximates the
        # Gaussian with box filters: measured mean 1.0-1.8 and 99th percentile 2-9 levels out of 255.
        assert difference.mean() < 2.5, (i, difference.mean())
        assert np.percentile(difference, 99) < 12, (i, np.percentile(difference, 99))


def test_each_operation_alone_matches_pil_closely():
    image = photo(3)
    tensor = TF.pil_to_tensor(image).unsqueeze(0)
    for position, name in enumerate(OPERATIONS):
        order = torch.tensor([[position] + [o for o in range(4) if o != position]])
        neutral = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
        # A hue shift of 20/255: PIL quantises the shift to whole 8-bit steps.
        values = {**neutral, name: {"brightness": 1.3, "contrast": 0.7, "saturation": 1.2, "hue": 20 / 255}[name]}
        p = _parameters(1, jitter=torch.tensor([True]), order=order, grayscale=torch.tensor([False]),
                        blur=torch.tensor([False]), solarize=torch.tensor([False]),
                        **{k: torch.tensor([v]) for k, v in values.items()})
        ours = augment(tensor, p, normalize=False)[0].numpy().transpose(1, 2, 0) * 255
        difference = np.abs(ours - pil_reference(image, p, 0, only=name))
        # PIL's hue goes through 8-bit HSV; the others round their intermediate (gray) and result to 8 bits.
        if name == "hue":  # 8-bit hue steps of 1/256 turn move a saturated pixel by up to ~6 levels per channel
            assert difference.mean() < 1.5 and difference.max() <= 12.0, (name, difference.mean(), difference.max())
        else:
            assert difference.max() <= 1.5, (name, difference.max())


def _uniform_ks(samples: torch.Tensor, low: float, high: float) -> float:
    ordered = np.sort((samples.numpy() - low) / (high - low))
    n = len(ordered)
    return float(np.max(np.maximum(np.arange(1, n + 1) / n - ordered, ordered - np.arange(n) / n)))


def test_parameters_follow_table10():
    n = 20000
    p = sample_parameters(n, 0.1, 0.2, torch.Generator().manual_seed(0))
    bound = 1.63 / np.sqrt(n)  # Kolmogorov-Smirnov at 1 %
    assert _uniform_ks(p.brightness, 0.6, 1.4) < bound and _uniform_ks(p.contrast, 0.6, 1.4) < bound
    assert _uniform_ks(p.saturation, 0.8, 1.2) < bound and _uniform_ks(p.hue, -0.1, 0.1) < bound
    assert _uniform_ks(p.sigma, 0.1, 2.0) < bound
    for rate, expected in ((p.jitter, 0.8), (p.grayscale, 0.2), (p.blur, 0.1), (p.solarize, 0.2)):
        observed = rate.float().mean().item()
        assert abs(observed - expected) < 4 * np.sqrt(expected * (1 - expected) / n)
    assert torch.equal(p.order.sort(dim=1).values, torch.arange(4).expand(n, 4))  # permutations
    first_operation = torch.bincount(p.order[:, 0], minlength=4).float() / n
    assert torch.all((first_operation - 0.25).abs() < 0.02)


def test_normalised_output_and_reproducibility():
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    a = augment(images, sample_parameters(4, 1.0, 0.2, torch.Generator().manual_seed(1)))
    b = augment(images, sample_parameters(4, 1.0, 0.2, torch.Generator().manual_seed(1)))
    assert torch.equal(a, b) and a.dtype == torch.float32 and a.shape == images.shape


@pytest.mark.slow
def test_training_with_the_batched_augmentation_lowers_the_loss(debug_config):
    import json
    from pathlib import Path

    from common.config import apply_overrides
    from pretrain.train import main

    config = apply_overrides(debug_config, ["augment.gpu=true", "optim.epochs=6", "run.log_every_steps=1"])
    run_dir = Path(main(config)["run_dir"])
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.2


@pytest.mark.slow
def test_compiled_augmentation_equals_the_eager_one():
    """augment.gpu_compile fuses the colour operations; the outputs stay those of the eager code."""
    from pretrain.gpu_augment import augment_views

    views = [torch.randint(0, 256, (6, 3, 24, 24), dtype=torch.uint8) for _ in range(2)]
    probabilities = [(1.0, 0.0), (0.1, 0.2)]
    eager = augment_views(views, probabilities, seed=5)
    compiled = augment_views(views, probabilities, seed=5, compiled=True)
    # The longest sums: contrast's mean over 24 x 24 pixels, the blur's two 13-tap passes (and its
    # kernel's normalisation), then a few dozen elementwise steps that the compiler may fuse.
    terms = 24 * 24 + 3 * 13 + 32
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(b, a, **reordering_tolerance(a, terms))
