"""The PatchMix pretraining loop: `main(config) -> result dict`.

One step (recipes.md): update the momentum encoder, mix both views at patch level with a permutation
drawn from a generator seeded by (seed, step, rank), compute queries for view 1 and mixed view 2 and
keys for view 1, view 2 and mixed view 1, and minimise the weighted soft-target InfoNCE terms.
All randomness derives from (seed, step) or (seed, epoch, sample index), so a run resumed from a
checkpoint repeats the uninterrupted run.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from common import dist, preemption, schedules
from common.checkpoint import atomic_write_text, checkpoint_path
from common.datasets import build_dataset, count_bad_images
from common.encoder import encoder_digest, record_spec, write_encoder_record
from common.errors import NonFiniteLossError, TrainingAborted
from common.health import StepHealth, agree
from common.lifecycle import RunLifecycle
from common.progress import Progress
from common.rundir import releases_run_locks
from common.runtime import autocast, derive_seed, resolve_device, resolve_precision, seed_everything
from common.sampling import EpochSampler, SeededViews
from pretrain.augment import pretraining_views, view_probabilities, view_sizes
from pretrain.configs import OptimConfig, PretrainConfig, encoder_record, run_directory
from pretrain.device_decode import EncodedViews, collate_encoded, decode_views
from pretrain.gpu_augment import augment_views
from pretrain.loss import soft_target_cross_entropy
from pretrain.mixers import MixResult, apply_mixer, mix_to_mix_from_compositions, place_targets
from pretrain.model import PatchMixModel
from pretrain.patchmix import origin_targets


def build_optimizer(model: nn.Module, config: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with two groups: weights (decayed) and biases / 1-D parameters such as norms and
    tokens' scales (never decayed). Frozen (momentum) parameters are left out."""
    decayed, not_decayed = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decayed if parameter.ndim >= 2 else not_decayed).append(parameter)
    groups = [{"params": decayed, "apply_weight_decay": True},
              {"params": not_decayed, "weight_decay": 0.0, "apply_weight_decay": False}]
    return torch.optim.AdamW(groups, lr=config.peak_lr(), betas=(config.beta1, config.beta2),
                             weight_decay=config.weight_decay, fused=device.type == "cuda")


def set_schedules(optimizer: torch.optim.Optimizer, config: OptimConfig, step: int,
                  steps_per_epoch: int) -> tuple[float, float]:
    """Set this step's learning rate and weight decay on every group; returns (lr, wd)."""
    total = config.epochs * steps_per_epoch
    lr = schedules.learning_rate(step, total, config.warmup_epochs * steps_per_epoch,
                                 config.peak_lr(), config.min_lr)
    wd = schedules.weight_decay(step, total, config.weight_decay, config.weight_decay_end)
    for group in optimizer.param_groups:
        group["lr"] = lr
        if group["apply_weight_decay"]:
            group["weight_decay"] = wd
    return lr, wd


def momentum_at(config: OptimConfig, step: int, steps_per_epoch: int) -> float:
    """Cosine EMA coefficient; `momentum_update=epoch` holds it for a whole epoch as published."""
    if config.momentum_update == "epoch":
        step = (step // steps_per_epoch) * steps_per_epoch
    return schedules.momentum(step, config.epochs * steps_per_epoch, config.momentum, config.momentum_end)


def patchmix_loss(model: nn.Module, keys_model: PatchMixModel, views: Sequence[torch.Tensor],
                  config: PretrainConfig, generator: torch.Generator, rank: int = 0,
                  world_size: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PatchMix objective for one per-device batch (any mixer of pretrain/mixers.py).

    Args:
        model: the query network (maybe DDP-wrapped); `model(list of batches)` -> list of queries.
        keys_model: the unwrapped PatchMixModel, for the gradient-free key path.
        views: [view1, view2, local crops...], each (B, 3, H, W) on the training device.
        generator: draws the mixing randomness (view 1, view 2, then each local crop).
    Returns:
        (scalar loss, {term name: detached scalar}) -- no host synchronisation.
    """
    weights, mix = config.loss, config.mix
    view1, view2, local_views = views[0], views[1], list(views[2:])
    batch, device = view1.shape[0], view1.device

    def mixed(images: torch.Tensor) -> MixResult:
        return apply_mixer(mix.method, images, generator, mix.num_mixed, config.model.patch_size)

    mixed1, mixed2 = mixed(view1), mixed(view2)
    gather = dist.all_gather_no_grad
    tau = weights.temperature
    to_origin_self = origin_targets(batch, rank, world_size, device, weights.origin_smoothing)

    need_mixed_query = weights.mix_to_origin_weight > 0 or weights.mix_to_mix_weight > 0
    # m = 1 (the MoCo v3 baseline) leaves the views unmixed: reuse the view-1 keys instead of recomputing them.
    need_mixed_key = need_mixed_query and weights.mix_to_mix_weight > 0 and mixed1.images is not view1
    key1, key2, *key_mixed = (gather(k) for k in keys_model.keys([view1, view2] + ([mixed1.images] if need_mixed_key else [])))
    query_inputs = ([view1] if weights.origin_weight > 0 else []) + ([mixed2.images] if need_mixed_query else [])
    local_mixed = [mixed(v) for v in local_views]
    count = len(local_views)
    # Published multi-crop: the local crops pass the heads as one batch, the mixed local crops as another.
    local_groups = [count, count] if count and config.model.batch_local_heads else [1] * (2 * count)
    queries = model(query_inputs + local_views + [m.images for m in local_mixed],
                    [1] * len(query_inputs) + local_groups)
    terms: dict[str, torch.Tensor] = {}
    if weights.origin_weight > 0:
        terms["origin"] = soft_target_cross_entropy(queries.pop(0), key2, to_origin_self, tau)
    if need_mixed_query:
        query_mixed2 = queries.pop(0)
        if weights.mix_to_origin_weight > 0:
            to_origin = place_targets(mixed2.composition, rank, world_size, mix.smoothing)
            terms["mix_to_origin"] = soft_target_cross_entropy(query_mixed2, key1, to_origin, tau)
        if weights.mix_to_mix_weight > 0:
            key_mixed1 = key_mixed[0] if key_mixed else key1
            to_mix = place_targets(mix_to_mix_from_compositions(mixed2.composition, mixed1.composition),
                                   rank, world_size, mix.smoothing)
            terms["mix_to_mix"] = soft_target_cross_entropy(query_mixed2, key_mixed1, to_mix, tau)
    if local_views:
        local_queries, local_mixed_queries = queries[:count], queries[count:]
        terms["local_origin"] = sum(soft_target_cross_entropy(q, key1, to_origin_self, tau)
                                    + soft_target_cross_entropy(q, key2, to_origin_self, tau)
                                    for q in local_queries) / count
        local_to_origin = [place_targets(m.composition, rank, world_size, mix.smoothing) for m in local_mixed]
        terms["local_mix_to_origin"] = sum(soft_target_cross_entropy(q, key1, t, tau)
                                           + soft_target_cross_entropy(q, key2, t, tau)
                                           for q, t in zip(local_mixed_queries, local_to_origin)) / count
    weight_of = {"origin": weights.origin_weight, "mix_to_origin": weights.mix_to_origin_weight,
                 "mix_to_mix": weights.mix_to_mix_weight, "local_origin": weights.local_origin_weight,
                 "local_mix_to_origin": weights.local_mix_to_origin_weight}
    loss = sum(weight_of[name] * value for name, value in terms.items())
    metrics = {name: value.detach() for name, value in terms.items()}
    # Collapse monitor: std of the normalised keys x sqrt(dim) is ~1 for spread embeddings, -> 0 at collapse.
    metrics["key_std"] = torch.nn.functional.normalize(key1.float(), dim=1).std(dim=0).mean() * math.sqrt(key1.shape[1])
    return loss, metrics


def training_step(model: PatchMixModel, query_model: nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, views: Sequence[torch.Tensor], config: PretrainConfig, step: int,
                  steps_per_epoch: int, precision: torch.dtype, rank: int = 0, world_size: int = 1):
    """One optimisation step on views already on the device (the training loop and `make bench`).

    Returns (loss, metrics, lr, weight decay, skipped): tensors stay on the device; `skipped` is
    1 when fp16 loss scaling skipped the update (known only with fp16, at the cost of a sync).
    """
    device = views[0].device
    if config.augment.gpu:  # the loader sent cropped, flipped uint8 views: colour, blur and solarize here
        views = augment_views(list(views), view_probabilities(config.augment),
                              derive_seed(config.run.seed, "gpu-augment", step, rank), config.augment.gpu_compile)
    lr, wd = set_schedules(optimizer, config.optim, step, steps_per_epoch)
    model.update_momentum(momentum_at(config.optim, step, steps_per_epoch))  # before the forward pass
    # Drop path draws from the global generator: seed it per step so resuming repeats it.
    torch.manual_seed(derive_seed(config.run.seed, "step", step, rank))
    mix_generator = torch.Generator().manual_seed(derive_seed(config.run.seed, "mix", step, rank))
    with autocast(device, precision):
        loss, metrics = patchmix_loss(query_model, model, views, config, mix_generator, rank, world_size)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    skipped = 0
    if scaler.is_enabled():
        scale_before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped = int(scaler.get_scale() < scale_before)
    else:
        optimizer.step()
    return loss, metrics, lr, wd, skipped


def loss_curve(records: list[dict], points: int = 200) -> list[list[float]]:
    """[[step, loss], ...] thinned to at most `points` entries, for reports that read result.json only."""
    curve = [[r["step"], r["loss"]] for r in records if "loss" in r]
    stride = max(1, -(-len(curve) // points))
    return curve[::stride] + ([curve[-1]] if curve and (len(curve) - 1) % stride else [])


def _convert_heads_to_sync_batchnorm(model: PatchMixModel) -> None:
    """Head BatchNorm statistics over the global batch (SyncBatchNorm exists on GPUs only; on CPU
    each process normalises its own batch)."""
    for name in ("projector", "predictor", "momentum_projector"):
        head = getattr(model, name)
        if head is not None:
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(head))


class TrainingData:
    """The training images as the loop reads them: dataset, sampler, loader per epoch, and the step
    at which views reach the device (decoded there, or moved)."""

    def __init__(self, config: PretrainConfig, base_dataset, batch_per_rank: int, device: torch.device):
        views_class = EncodedViews if config.augment.gpu_decode else SeededViews
        self.config, self.device, self.batch_per_rank = config, device, batch_per_rank
        self.dataset = views_class(base_dataset, pretraining_views(config.augment, config.model.image_size),
                                   config.run.seed)
        self.output_sizes = [size for size, _ in view_sizes(config.augment, config.model.image_size)]
        self.sampler = EpochSampler(len(self.dataset), batch_per_rank, config.run.seed, dist.rank(), dist.world_size())

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch

    def batches_from(self, step: int):
        """Device views of every step from `step` on, epoch after epoch (the sampler resumes mid-epoch)."""
        while True:
            epoch, batch_in_epoch = divmod(step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch, batch_in_epoch)
            gpu_decode = self.config.augment.gpu_decode
            loader = DataLoader(self.dataset, batch_size=self.batch_per_rank, sampler=self.sampler,
                                num_workers=self.config.data.num_workers, pin_memory=self.device.type == "cuda",
                                drop_last=True, collate_fn=collate_encoded if gpu_decode else None)
            for views, _ in loader:
                if gpu_decode:  # (JPEG bytes or pixels, crop boxes) -> uint8 views on the device
                    yield decode_views(views.payloads(), views.boxes, self.output_sizes, self.device)
                else:
                    yield [v.to(self.device, non_blocking=True) for v in views]
                step += 1


def build_training(config: PretrainConfig, device: torch.device, precision: torch.dtype):
    """Model, optimizer and fp16 loss scaler with identical initial weights on every rank."""
    seed_everything(config.run.seed)
    model = PatchMixModel(config.model).to(device)
    optimizer = build_optimizer(model, config.optim, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    return model, optimizer, scaler


def restore(model: PatchMixModel, optimizer, scaler, state: dict, world_size: int, where: Path) -> tuple[int, int]:
    """Load a checkpoint state; returns (step, skipped fp16 steps)."""
    if state["world_size"] != world_size:
        raise ValueError(f"{where} was checkpointed with {state['world_size']} processes; resuming with "
                         f"{world_size} would change the per-device mixing. Resume with the same number of "
                         "processes or start a new run directory.")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    return state["step"], state.get("skipped_steps", 0)


def distributed_query_model(model: PatchMixModel, device: torch.device) -> nn.Module:
    """The query path under DDP (head BatchNorms synchronised on GPUs), or the model itself."""
    if dist.world_size() == 1:
        return model
    if device.type == "cuda":
        _convert_heads_to_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def check_health(health: StepHealth, config: PretrainConfig, step: int, skipped_steps: int,
                 bad_image_dir: Path, run: RunLifecycle) -> bool:
    """The periodic cross-rank check: stop on a non-finite loss or an exceeded budget (every rank at
    the same step); returns whether a preemption signal asks for a checkpoint now."""
    over_budget = skipped_steps > config.run.max_skipped_steps
    if dist.is_main_process():
        bad_images = count_bad_images(bad_image_dir)
        if bad_images:
            atomic_write_text(json.dumps(dict(bad_images.most_common()), indent=1), run.path / "bad_images.json")
        over_budget |= len(bad_images) > config.data.max_bad_images
    first_nonfinite, abort, preempted = agree(health, over_budget)
    if first_nonfinite >= 0:
        raise NonFiniteLossError(
            f"non-finite loss at step {first_nonfinite}; all {dist.world_size()} process(es) stopped at step "
            f"{step}. The last good checkpoint is kept in {run.run_dir.checkpoint_dir}. Check the data, or "
            "continue from that checkpoint with another setting as a new run: python -m pretrain --preset "
            f"{config.preset or '...'} --resume-from {run.path} optim.base_lr={config.optim.base_lr / 2:g} "
            "(plus this run's other overrides)")
    if abort:
        raise TrainingAborted(
            f"stopped at step {step}: {skipped_steps} skipped fp16 steps (limit {config.run.max_skipped_steps}) "
            f"or more than {config.data.max_bad_images} unreadable images (see {run.path / 'bad_images.json'})")
    return preempted


@releases_run_locks
def main(config: PretrainConfig) -> dict:
    """Pretrain as configured, resuming from the run directory's newest checkpoint if there is one.

    Returns the result record (also written to <run dir>/result.json). Raises NonFiniteLossError or
    TrainingAborted on every rank at the same step; exits for requeue after a preemption signal.
    """
    device = resolve_device(config.run.device)
    dist.init_distributed(device.type)
    world_size, precision = dist.world_size(), resolve_precision(config.run.precision, device)
    if config.optim.batch_size % world_size:
        raise ValueError(f"optim.batch_size {config.optim.batch_size} is not divisible by the {world_size} processes")
    run_dir = run_directory(config)  # reads the dataset folder's listing: a wrong root fails here
    run = RunLifecycle(run_dir, "pretrain", "step", config.run.keep_last_checkpoints)
    if run.finished() is not None:  # complete: say so without reading the dataset
        return run.start(config)
    bad_image_dir = run.path / "bad_images"  # the folder preflight fails here, before any training
    base_dataset = build_dataset(config.data, "train", None, bad_image_log=bad_image_dir,
                                 decode=not config.augment.gpu_decode)
    done = run.start(config, config.run.wait_for_lock)
    if done is not None:  # finished by the process we waited for
        return done
    data = TrainingData(config, base_dataset, config.optim.batch_size // world_size, device)
    run.milestone_every = config.run.milestone_every_epochs * data.steps_per_epoch
    model, optimizer, scaler = build_training(config, device, precision)
    if dist.is_main_process():
        write_encoder_record(run.path, encoder_record(config, run_dir.experiment_digest))
    state, resumed_from = run.resume(Path(config.run.resume_from) if config.run.resume_from else None)
    step, skipped_steps = restore(model, optimizer, scaler, state, world_size, run.path) if state else (0, 0)
    if dist.is_main_process() and state:
        source = f"the checkpoint of {config.run.resume_from} (a new run)" if resumed_from else "its checkpoint"
        print(f"[pretrain] resuming {run.path} from {source} at step {step}")
    query_model = distributed_query_model(model, device)
    total_steps = config.optim.epochs * data.steps_per_epoch
    stop_step = min(config.optim.max_steps or total_steps, total_steps)
    run.total = stop_step

    def checkpoint(at_step: int) -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "step": at_step, "config_hash": run_dir.config_digest, "world_size": world_size,
                "skipped_steps": skipped_steps}

    health = StepHealth(device)
    progress = Progress(stop_step, step, f"pretrain {config.run.name}", "step",
                        config.run.progress and dist.is_main_process(), items_per_unit=config.optim.batch_size)
    last_metrics: dict[str, float] = {}
    started = time.time()
    for views in (data.batches_from(step) if step < stop_step else ()):
        loss, metrics, lr, wd, skipped = training_step(model, query_model, optimizer, scaler, views, config, step,
                                                       data.steps_per_epoch, precision, dist.rank(), world_size)
        health.observe(loss, step + 1)
        skipped_steps += skipped
        step += 1
        progress.update(1)
        log_now = step % config.run.log_every_steps == 0
        checkpoint_now = step % config.run.checkpoint_every_steps == 0 or step == stop_step
        if not (log_now or checkpoint_now):
            continue
        preempted = check_health(health, config, step, skipped_steps, bad_image_dir, run)
        if log_now or step == stop_step:
            reduced = {name: dist.all_reduce_mean(value).item() for name, value in metrics.items()}
            loss_value = dist.all_reduce_mean(loss.detach()).item()
            last_metrics = {"step": step, "epoch": step / data.steps_per_epoch, "loss": loss_value, "lr": lr,
                            "weight_decay": wd, "skipped_steps": skipped_steps, **reduced}
            progress.report(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
            run.log(last_metrics)
            if dist.is_main_process() and reduced["key_std"] < config.run.collapse_warning:
                warnings.warn(f"step {step}: key embedding std x sqrt(dim) = {reduced['key_std']:.3f} "
                              f"< {config.run.collapse_warning}: the representation may be collapsing")
        if checkpoint_now or preempted:
            run.save(checkpoint(step))
        if preempted:
            progress.close()
            if dist.is_main_process():
                print(f"[pretrain] preemption: checkpoint saved at step {step}; exiting for requeue")
            preemption.hand_over()
        if step >= stop_step:
            break
    progress.close()
    records = run.run_dir.read_metrics()
    if not last_metrics and records:  # resumed at the very end: nothing left to log
        last_metrics = records[-1]
    if dist.is_main_process():  # the finished encoder: which checkpoint, and the digest evaluations will see
        record = encoder_record(config, run_dir.experiment_digest)
        digest = encoder_digest(model.evaluation_encoder().state_dict(), record_spec(record))
        write_encoder_record(run.path, {**record, "final": {"checkpoint": checkpoint_path(run_dir.checkpoint_dir, step).name,
                                                             "step": step, "digest": digest}})
    result = {"stage": "pretrain", "preset": config.preset, "experiment": config.run.experiment,
              "seed": config.run.seed, "dataset": config.data.dataset, "arch": config.model.arch,
              "patch_size": config.model.patch_size, "num_mixed": config.mix.num_mixed,
              "epochs": config.optim.epochs, "steps": step, "total_steps": total_steps,
              "epochs_completed": step / data.steps_per_epoch, "final_metrics": last_metrics,
              "checkpoint": str(checkpoint_path(run_dir.checkpoint_dir, step)),
              "skipped_steps": skipped_steps, "bad_images": len(count_bad_images(bad_image_dir)),
              "loss_curve": loss_curve(records), "seconds_this_session": round(time.time() - started, 1)}
    if config.run.resume_from:
        result["resumed_from"] = resumed_from or {"run_dir": config.run.resume_from}
    return run.finish(result)
