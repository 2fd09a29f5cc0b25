"""Per-step schedules: warmup + cosine learning rate, cosine weight decay, cosine momentum."""
from __future__ import annotations

import math


def scaled_lr(base_lr: float, batch_size: int) -> float:
    """The linear scaling rule of every recipe here: lr = base_lr x global batch / 256."""
    return base_lr * batch_size / 256


def cosine(progress: float, start: float, end: float) -> float:
    """Cosine interpolation from `start` (progress 0) to `end` (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate(step: int, total_steps: int, warmup_steps: int, peak: float, minimum: float) -> float:
    """Linear warmup from 0 to `peak` over `warmup_steps`, then cosine from `peak` to `minimum`."""
    if step < warmup_steps:
        return peak * step / warmup_steps
    return cosine((step - warmup_steps) / max(total_steps - warmup_steps, 1), peak, minimum)


def weight_decay(step: int, total_steps: int, start: float, end: float) -> float:
    return cosine(step / max(total_steps, 1), start, end)


def momentum(step: int, total_steps: int, start: float, end: float) -> float:
    """EMA coefficient, cosine from `start` (0.996) to `end` (1)."""
    return cosine(step / max(total_steps, 1), start, end)
