"""The pretraining loop of every method: `main(config) -> result dict`.

The method (`config.method`, pretrain/methods/) builds the networks, sets each step's schedules and
computes the loss of a batch of views; this loop owns the rest: data and views, the optimizer step
and fp16 scaling, checkpoints and resume, DDP, the run directory's lock, logs and trackers, the
encoder record. All randomness derives from (seed, step) or (seed, epoch, sample index), so a run
resumed from a checkpoint repeats the uninterrupted run.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from common import dist, preemption
from common.checkpoint import atomic_write_text, checkpoint_path
from common.datasets import build_dataset, count_bad_images
from common.encoder import encoder_digest, record_spec, write_encoder_record
from common.errors import NonFiniteLossError, TrainingAborted
from common.health import StepHealth, agree
from common.lifecycle import RunLifecycle
from common.progress import Progress
from common.rundir import releases_run_locks
from common.runtime import autocast, derive_seed, resolve_device, resolve_precision, seed_everything, set_cpu_threads
from common.sampling import EpochSampler, SeededViews, StepSpanSampler
from common.transforms import normalise_uint8
from pretrain.augment import pretraining_views, view_probabilities, view_sizes
from pretrain.configs import OptimConfig, PretrainConfig, encoder_record, run_directory
from pretrain.device_decode import EncodedViews, collate_encoded, decode_views
from pretrain.gpu_augment import augment_views
from pretrain.methods import LossContext, StepSchedule, method_named
from pretrain.methods.base import weight_decay_groups


def build_optimizer(model: nn.Module, config: OptimConfig, device: torch.device,
                    parameter_groups: list[dict] | None = None) -> torch.optim.AdamW:
    """AdamW over the method's parameter groups (default: weights decayed, biases and 1-D parameters
    such as norms never; frozen momentum parameters left out)."""
    groups = parameter_groups if parameter_groups is not None else weight_decay_groups(model)
    return torch.optim.AdamW(groups, lr=config.peak_lr(), betas=(config.beta1, config.beta2),
                             weight_decay=config.weight_decay, fused=device.type == "cuda")


def apply_schedule(optimizer: torch.optim.Optimizer, schedule: StepSchedule) -> None:
    """Set this step's learning rate on every group and its weight decay on the decayed groups."""
    for group in optimizer.param_groups:
        group["lr"] = schedule.learning_rate
        if group["apply_weight_decay"]:
            group["weight_decay"] = schedule.weight_decay


def training_step(model: nn.Module, query_model: nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, views: Sequence[torch.Tensor], config: PretrainConfig, step: int,
                  steps_per_epoch: int, precision: torch.dtype, rank: int = 0, world_size: int = 1):
    """One optimisation step of the configured method on views already on the device (the training
    loop and `make bench`).

    Returns (loss, metrics, lr, weight decay, skipped): tensors stay on the device; `skipped` is
    1 when fp16 loss scaling skipped the update (known only with fp16, at the cost of a sync).
    """
    method = method_named(config.method)
    device = views[0].device
    if config.augment.gpu:  # the loader sent cropped, flipped uint8 views: colour, blur and solarize here
        views = augment_views(list(views), view_probabilities(config.augment),
                              derive_seed(config.run.seed, "gpu-augment", step, rank), config.augment.gpu_compile)
    schedule = method.schedule(config, step, steps_per_epoch)
    apply_schedule(optimizer, schedule)
    method.before_forward(model, schedule)
    # Drop path draws from the global generator: seed it per step so resuming repeats it.
    torch.manual_seed(derive_seed(config.run.seed, "step", step, rank))
    context = LossContext(step, steps_per_epoch, schedule,
                          torch.Generator().manual_seed(derive_seed(config.run.seed, "mix", step, rank)), rank, world_size)
    with autocast(device, precision):
        loss, metrics = method.loss(query_model, model, views, config, context)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    method.before_optimizer_step(model, optimizer, scaler, config, context)
    skipped = 0
    if scaler.is_enabled():
        scale_before = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        skipped = int(scaler.get_scale() < scale_before)
    else:
        optimizer.step()
    method.after_optimizer_step(model, schedule)
    return loss, metrics, schedule.learning_rate, schedule.weight_decay, skipped


def loss_curve(records: list[dict], points: int = 200) -> list[list[float]]:
    """[[step, loss], ...] thinned to at most `points` entries, for reports that read result.json only."""
    curve = [[r["step"], r["loss"]] for r in records if "loss" in r]
    stride = max(1, -(-len(curve) // points))
    return curve[::stride] + ([curve[-1]] if curve and (len(curve) - 1) % stride else [])


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

    def batches(self, start: int, stop: int):
        """Device views of steps [start, stop), from one loader for the whole span: its workers and
        their prefetched batches carry over epoch boundaries (the sampler resumes mid-epoch)."""
        gpu_decode = self.config.augment.gpu_decode
        loader = DataLoader(self.dataset, batch_size=self.batch_per_rank,
                            sampler=StepSpanSampler(self.sampler, start, stop),
                            num_workers=self.config.data.num_workers, pin_memory=self.device.type == "cuda",
                            drop_last=True, collate_fn=collate_encoded if gpu_decode else None)
        for views, _ in loader:
            if gpu_decode:  # (JPEG bytes or pixels, crop boxes) -> uint8 views on the device
                yield decode_views(views.payloads(), views.boxes, self.output_sizes, self.device)
            elif self.config.augment.gpu:  # uint8 crops: colour, blur and solarize in the training step
                yield [v.to(self.device, non_blocking=True) for v in views]
            else:  # augmented uint8 views: scaled and normalised here, a batch at a time
                yield [normalise_uint8(v.to(self.device, non_blocking=True)) for v in views]


@dataclass
class TrainingState:
    """What a checkpoint holds and the loop advances: networks, optimizer, fp16 scaler, step."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    step: int = 0
    skipped_steps: int = 0  # fp16 steps whose update the loss scaler skipped

    def checkpoint(self, config_digest: str, world_size: int) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "step": self.step, "config_hash": config_digest,
                "world_size": world_size, "skipped_steps": self.skipped_steps}


def build_training(config: PretrainConfig, device: torch.device, precision: torch.dtype) -> TrainingState:
    """The method's networks, the optimizer over its parameter groups and the fp16 loss scaler, with
    identical initial weights on every rank."""
    method = method_named(config.method)
    seed_everything(config.run.seed)
    model = method.build_model(config).to(device)
    optimizer = build_optimizer(model, config.optim, device, method.parameter_groups(model, config))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    return TrainingState(model, optimizer, scaler)


def restore(training: TrainingState, state: dict, world_size: int, where: Path) -> None:
    """Load a checkpoint state into `training` (weights, optimizer, scaler, step)."""
    if state["world_size"] != world_size:
        raise ValueError(f"{where} was checkpointed with {state['world_size']} processes; resuming with "
                         f"{world_size} would change the per-device mixing. Resume with the same number of "
                         "processes or start a new run directory.")
    training.model.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.scaler.load_state_dict(state["scaler"])
    training.step, training.skipped_steps = state["step"], state.get("skipped_steps", 0)


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


def open_run(config: PretrainConfig) -> tuple[RunLifecycle, object | None, dict | None]:
    """The run directory, locked, and the training images; or the result if the run is complete
    (then nothing else is read). Returns (run, dataset, finished result or None)."""
    run_dir = run_directory(config)  # reads the dataset folder's listing: a wrong root fails here
    run = RunLifecycle(run_dir, "pretrain", "step", config.run.keep_last_checkpoints)
    if run.finished() is not None:  # complete: say so without reading the dataset
        return run, None, run.start(config)
    # The bad-image folder's preflight fails here, before any training. The views take grey images as
    # they are (pretrain/augment.py); the device decoder reads RGB.
    dataset = build_dataset(config.data, "train", None, bad_image_log=run.path / "bad_images",
                            decode=not config.augment.gpu_decode, keep_gray=not config.augment.gpu_decode)
    return run, dataset, run.start(config, config.run.wait_for_lock)  # not None: finished while we waited


def start_training(config: PretrainConfig, run: RunLifecycle, device: torch.device, precision: torch.dtype,
                   world_size: int) -> tuple[TrainingState, dict | None]:
    """Networks and optimizer, the encoder record, and the newest checkpoint (this run's, or the
    --resume-from run's) loaded. Returns (state, what it resumed from when that is another run)."""
    training = build_training(config, device, precision)
    if dist.is_main_process():
        write_encoder_record(run.path, encoder_record(config, run.run_dir.experiment_digest))
    state, resumed_from = run.resume(Path(config.run.resume_from) if config.run.resume_from else None)
    if state:
        restore(training, state, world_size, run.path)
        if dist.is_main_process():
            source = f"the checkpoint of {config.run.resume_from} (a new run)" if resumed_from else "its checkpoint"
            print(f"[pretrain] resuming {run.path} from {source} at step {training.step}")
    return training, resumed_from


def log_step(config: PretrainConfig, run: RunLifecycle, progress: Progress, step: int, steps_per_epoch: int,
             loss: torch.Tensor, metrics: dict, lr: float, wd: float, skipped_steps: int) -> dict:
    """Average the step's loss and metrics over ranks, log them, warn of a collapsing representation."""
    reduced = {name: dist.all_reduce_mean(value).item() for name, value in metrics.items()}
    loss_value = dist.all_reduce_mean(loss.detach()).item()
    record = {"step": step, "epoch": step / steps_per_epoch, "loss": loss_value, "lr": lr, "weight_decay": wd,
              "skipped_steps": skipped_steps, **reduced}
    progress.report(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
    run.log(record)
    if dist.is_main_process() and reduced.get("key_std", math.inf) < config.run.collapse_warning:
        warnings.warn(f"step {step}: key embedding std x sqrt(dim) = {reduced['key_std']:.3f} "
                      f"< {config.run.collapse_warning}: the representation may be collapsing")
    return record


def train_steps(config: PretrainConfig, run: RunLifecycle, training: TrainingState, data: TrainingData,
                device: torch.device, precision: torch.dtype, stop_step: int) -> dict:
    """Train from `training.step` to `stop_step`, with periodic health checks, logs and checkpoints;
    hands over to the launcher on preemption. Returns the last logged metrics."""
    world_size = dist.world_size()
    query_model = method_named(config.method).distributed(training.model, device)
    health = StepHealth(device)
    progress = Progress(stop_step, training.step, f"pretrain {config.run.name}", "step",
                        config.run.progress and dist.is_main_process(), items_per_unit=config.optim.batch_size)
    last_metrics: dict = {}
    for views in (data.batches(training.step, stop_step) if training.step < stop_step else ()):
        loss, metrics, lr, wd, skipped = training_step(training.model, query_model, training.optimizer, training.scaler,
                                                       views, config, training.step, data.steps_per_epoch, precision,
                                                       dist.rank(), world_size)
        health.observe(loss, training.step + 1)
        training.skipped_steps += skipped
        training.step += 1
        progress.update(1)
        step = training.step
        log_now = step % config.run.log_every_steps == 0
        checkpoint_now = step % config.run.checkpoint_every_steps == 0 or step == stop_step
        if not (log_now or checkpoint_now):
            continue
        preempted = check_health(health, config, step, training.skipped_steps, run.path / "bad_images", run)
        if log_now or step == stop_step:
            last_metrics = log_step(config, run, progress, step, data.steps_per_epoch, loss, metrics, lr, wd,
                                    training.skipped_steps)
        if checkpoint_now or preempted:
            run.save(training.checkpoint(run.run_dir.config_digest, world_size))
        if preempted:
            progress.close()
            if dist.is_main_process():
                print(f"[pretrain] preemption: checkpoint saved at step {step}; exiting for requeue")
            preemption.hand_over()
        if step >= stop_step:
            break
    progress.close()
    return last_metrics


def finish(config: PretrainConfig, run: RunLifecycle, training: TrainingState, steps_per_epoch: int,
           last_metrics: dict, resumed_from: dict | None, started: float) -> dict:
    """The final encoder's record (checkpoint and digest evaluations will see) and the result record."""
    step, checkpoint_dir = training.step, run.run_dir.checkpoint_dir
    records = run.run_dir.read_metrics()
    if not last_metrics and records:  # resumed at the very end: nothing left to log
        last_metrics = records[-1]
    if dist.is_main_process():
        record = encoder_record(config, run.run_dir.experiment_digest)
        digest = encoder_digest(training.model.evaluation_encoder().state_dict(), record_spec(record))
        write_encoder_record(run.path, {**record, "final": {"checkpoint": checkpoint_path(checkpoint_dir, step).name,
                                                             "step": step, "digest": digest}})
    total_steps = config.optim.epochs * steps_per_epoch
    result = {"stage": "pretrain", "preset": config.preset, "experiment": config.run.experiment,
              "seed": config.run.seed, "dataset": config.data.dataset, "method": config.method,
              "arch": config.model.arch, "patch_size": config.model.patch_size,
              "num_mixed": None, **method_named(config.method).result_fields(config),
              "epochs": config.optim.epochs, "steps": step, "total_steps": total_steps,
              "epochs_completed": step / steps_per_epoch, "final_metrics": last_metrics,
              "checkpoint": str(checkpoint_path(checkpoint_dir, step)),
              "skipped_steps": training.skipped_steps, "bad_images": len(count_bad_images(run.path / "bad_images")),
              "loss_curve": loss_curve(records), "seconds_this_session": round(time.time() - started, 1)}
    if config.run.resume_from:
        result["resumed_from"] = resumed_from or {"run_dir": config.run.resume_from}
    return run.finish(result)


@releases_run_locks
def main(config: PretrainConfig) -> dict:
    """Pretrain as configured, resuming from the run directory's newest checkpoint if there is one.

    Returns the result record (also written to <run dir>/result.json). Raises NonFiniteLossError or
    TrainingAborted on every rank at the same step; exits for requeue after a preemption signal.
    """
    device = resolve_device(config.run.device)
    set_cpu_threads(config.run.cpu_threads)
    dist.init_distributed(device.type)
    world_size, precision = dist.world_size(), resolve_precision(config.run.precision, device)
    if config.optim.batch_size % world_size:
        raise ValueError(f"optim.batch_size {config.optim.batch_size} is not divisible by the {world_size} processes")
    run, dataset, finished = open_run(config)
    if finished is not None:
        return finished
    data = TrainingData(config, dataset, config.optim.batch_size // world_size, device)
    run.milestone_every = config.run.milestone_every_epochs * data.steps_per_epoch
    training, resumed_from = start_training(config, run, device, precision, world_size)
    total_steps = config.optim.epochs * data.steps_per_epoch
    stop_step = min(config.optim.max_steps or total_steps, total_steps)
    run.total = stop_step
    started = time.time()
    last_metrics = train_steps(config, run, training, data, device, precision, stop_step)
    return finish(config, run, training, data.steps_per_epoch, last_metrics, resumed_from, started)
