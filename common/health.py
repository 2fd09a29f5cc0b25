"""Run health shared by the training stages: the first non-finite loss, tracked on the device."""
from __future__ import annotations

import torch

from common import dist, preemption


class StepHealth:
    """First step with a non-finite loss, tracked on the device: no host synchronisation per step."""

    def __init__(self, device: torch.device):
        self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=device)

    def observe(self, loss: torch.Tensor, step: int) -> None:
        newly_bad = (self.first_nonfinite < 0) & ~torch.isfinite(loss.detach())
        self.first_nonfinite = torch.where(newly_bad, torch.full_like(self.first_nonfinite, step),
                                           self.first_nonfinite)

    def first_bad_step(self) -> int:
        """The first non-finite step seen so far, or -1 (one host synchronisation)."""
        return int(self.first_nonfinite.item())

    def agreed_first_bad_step(self) -> int:
        """The earliest non-finite step over all ranks, or -1: identical on every rank, so that all stop
        together (one collective and one host synchronisation)."""
        return agree(self, False)[0]


def agree(health: StepHealth, over_budget: bool) -> tuple[int, bool, bool]:
    """The periodic cross-rank check. Returns (earliest non-finite step or -1, any rank over a
    budget, any rank asked to checkpoint for preemption) -- identical on every rank."""
    first = health.first_nonfinite.float()
    never = torch.tensor(float("-inf"), device=first.device)
    flags = torch.stack([torch.where(first >= 0, -first, never),
                         torch.tensor(float(over_budget), device=first.device),
                         torch.tensor(float(preemption.requested()), device=first.device)])
    flags = dist.all_reduce_max(flags).tolist()
    return (int(-flags[0]) if flags[0] != float("-inf") else -1), bool(flags[1]), bool(flags[2])
