"""Data-parallel training on CPU (gloo): equivalence with one process, resume, NaN agreement."""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from distributed import torchrun  # noqa: E402

from common.config import apply_overrides  # noqa: E402
from pretrain.configs import preset  # noqa: E402
from pretrain.model import PatchMixModel  # noqa: E402
from pretrain.patchmix import mix_to_mix_targets, mix_to_origin_targets, origin_targets, patch_mix  # noqa: E402
from pretrain.loss import soft_target_cross_entropy  # noqa: E402
from tests.tolerances import largest_magnitude, reordering_tolerance, vit_accumulated_terms  # noqa: E402

pytestmark = pytest.mark.slow


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def test_two_process_ddp_equals_single_process_on_concatenated_batch(tmp_path):
    overrides = ["model.drop_path_rate=0.0", "optim.batch_size=16"]
    done = torchrun(2, "--mode", "step", "--output", str(tmp_path), *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # Reference: one process, the same per-device mixing (generator 100 + r on half r), keys of
    # both halves concatenated as all_gather does, targets offset by r * B; BatchNorm statistics
    # per half, as each CPU process computes them.
    config = apply_overrides(preset("debug_cpu"), overrides)
    torch.manual_seed(0)
    model = PatchMixModel(config.model).double()
    from workers.pretrain_worker import fixed_views

    view1, view2 = (v.double() for v in fixed_views(16, 32))
    batch, m, patch, tau = 8, config.mix.num_mixed, config.model.patch_size, config.loss.temperature
    halves = []
    for r in range(2):
        generator = torch.Generator().manual_seed(100 + r)
        x1, x2 = view1[r * batch:(r + 1) * batch], view2[r * batch:(r + 1) * batch]
        mixed1, _ = patch_mix(x1, m, patch, generator)
        mixed2, _ = patch_mix(x2, m, patch, generator)
        halves.append((x1, x2, mixed1, mixed2))
    keys = [torch.cat(parts) for parts in zip(*(model.keys([h[0], h[1], h[2]]) for h in halves))]
    losses = []
    for r, (x1, x2, mixed1, mixed2) in enumerate(halves):
        query1, query_mixed2 = model([x1, mixed2])
        losses.append(soft_target_cross_entropy(query1, keys[1], origin_targets(batch, r, 2), tau)
                      + 0.5 * soft_target_cross_entropy(query_mixed2, keys[0], mix_to_origin_targets(batch, m, r, 2), tau)
                      + 0.5 * soft_target_cross_entropy(query_mixed2, keys[2], mix_to_mix_targets(batch, m, r, 2), tau))
    # Two processes sum the same terms in another order (per-half batches, gradients averaged by DDP).
    head_widths = (config.model.projector_hidden_dim, config.model.output_dim, config.model.predictor_hidden_dim)
    terms = vit_accumulated_terms(config.model.arch, config.model.image_size, config.model.patch_size,
                                  batch=16, head_widths=head_widths)
    for r in range(2):
        torch.testing.assert_close(ranks[r]["loss"], losses[r], **reordering_tolerance(losses[r], terms))
    (sum(losses) / 2).backward()  # DDP averages the ranks' gradients
    gradients = {name: parameter.grad for name, parameter in model.named_parameters() if parameter.grad is not None}
    magnitude = largest_magnitude(gradients.values())
    for name, gradient in gradients.items():
        for r in range(2):
            torch.testing.assert_close(ranks[r]["grads"][name], gradient,
                                       **reordering_tolerance(gradient, terms, magnitude=magnitude))


def test_two_process_resume_and_world_size_guard(tmp_path):
    overrides = ["optim.epochs=2", "run.log_every_steps=1", "run.checkpoint_every_steps=3",
                 "run.keep_last_checkpoints=20", "optim.batch_size=16"]  # 32 steps, 16 per epoch
    full = torchrun(2, "--output", str(tmp_path / "full"), *overrides)
    assert full.returncode == 0, full.stderr[-3000:]
    full_dir = next((tmp_path / "full").iterdir())
    # A two-process run that died after its step-21 checkpoint (mid-epoch 1).
    resumed_dir = tmp_path / "resumed" / full_dir.name
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(full_dir / "checkpoints" / "checkpoint_00000021.pt", resumed_dir / "checkpoints")
    resumed = torchrun(2, "--output", str(tmp_path / "resumed"), *overrides)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full_losses, resumed_losses = _losses(full_dir), _losses(resumed_dir)
    assert sorted(resumed_losses) == list(range(22, 33))
    assert all(resumed_losses[s] == full_losses[s] for s in resumed_losses)
    final = "checkpoints/checkpoint_00000032.pt"
    a, b = torch.load(full_dir / final)["model"], torch.load(resumed_dir / final)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    # The same checkpoint with one process: refused, naming both world sizes.
    single_dir = tmp_path / "single" / full_dir.name
    (single_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(full_dir / "checkpoints" / "checkpoint_00000021.pt", single_dir / "checkpoints")
    single = torchrun(1, "--output", str(tmp_path / "single"), *overrides)
    assert single.returncode != 0
    assert "checkpointed with 2 processes; resuming with 1" in single.stderr


def test_nan_on_one_rank_stops_both_at_the_same_step(tmp_path):
    overrides = ["optim.epochs=1", "run.log_every_steps=4", "run.checkpoint_every_steps=4", "optim.batch_size=16"]
    done = torchrun(2, "--output", str(tmp_path), "--nan-at-step", "6", "--nan-rank", "1", *overrides)
    assert done.returncode != 0
    stopped = [(tmp_path / f"rank{r}.stopped") for r in range(2)]
    assert all(path.is_file() for path in stopped), done.stdout + done.stderr[-2000:]
    assert all("non-finite loss at step 6; all 2 process(es) stopped at step 8" in p.read_text() for p in stopped)
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_00000004.pt"]  # the last good one; nothing saved after the NaN
    assert not (run_dir / "result.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [("method=dino", "dino.out_dim=64", "dino.hidden_dim=32", "dino.bottleneck_dim=16"),
                                       ("method=sdmp", "sdmp.paste_partner=true")], ids=["dino", "sdmp"])
def test_baselines_train_under_two_process_ddp(tmp_path, overrides):
    """DINO's all-reduced center and SDMP's gathered shares and partner images under DDP (gloo): the
    two processes finish the run with finite losses and a finished result."""
    done = torchrun(2, "--output", str(tmp_path), "optim.epochs=1", "optim.batch_size=16", "run.log_every_steps=4",
                    *overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    losses = _losses(run_dir)
    assert sorted(losses) == [4, 8, 12, 16] and all(math.isfinite(v) for v in losses.values())
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 16 and result["method"] == overrides[0].split("=")[1]
