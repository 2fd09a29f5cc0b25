"""Train and evaluate Mask R-CNN with a pretrained ViT on COCO: `main(config) -> result dict`.

The run directory `<pretraining run>/transfer/<config>-<weights digest>-<hash>/` holds config.yaml,
provenance, the converted backbone checkpoint, detectron2's own output (checkpoints, metrics) and
finally result.json with box and mask AP (pycocotools, through detectron2's COCOEvaluator).
Re-running resumes from detectron2's last checkpoint; a finished run says so and does nothing.
The class count and category mapping come from the training json, so any COCO-format data works.
detectron2 is an optional dependency (no PyPI release): it is imported inside the functions that
use it, so that the stage record and the rest of the suite work without it.
"""
from __future__ import annotations

from typing import ClassVar

import json
import math
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from common import dist, preemption
from common.config import ConfigError
from common.encoder import SourceConfig
from common.rundir import RunDirectory, releases_run_locks
from common.runtime import NON_RESULT_FIELDS, RunConfig
from transfer import require_detectron2
from transfer.configs import CONFIGS
from transfer.weights import (FPN_PREFIX, PREFIX, backbone_arguments, check_backbone_loaded, load_encoder,
                              to_detectron2, write_detectron2_checkpoint)

NO_PREDICTIONS = "no detection above the score threshold on the validation set: COCOEvaluator reports no AP"

TRAIN_NAME, VAL_NAME = "patchmix_coco_train", "patchmix_coco_val"


@dataclass
class TransferConfig:
    RANGES: ClassVar[dict[str, str]] = {"num_heads": "[0, inf)"}
    config: str = "vitdet_100ep"  # vitdet_100ep | vit_fpn_100ep | smoke | smoke_fpn (transfer/configs)
    source: SourceConfig = field(default_factory=SourceConfig)
    num_heads: int = 0  # 0: the checkpoint's (published ViT-S checkpoints have 12)
    coco_root: str = ""  # holds annotations/ train2017/ val2017/; "" = $DETECTRON2_DATASETS/coco
    train_json: str = ""  # any other COCO-format data instead of coco_root
    train_images: str = ""
    val_json: str = ""
    val_images: str = ""
    overrides: list[str] = field(default_factory=list)  # detectron2 LazyConfig overrides, e.g. train.max_iter=100
    run: RunConfig = field(default_factory=lambda: RunConfig(name="transfer", output_root=""))

    def check(self) -> None:
        if self.config not in CONFIGS:
            raise ConfigError(f"config must be one of {', '.join(CONFIGS)}, got {self.config!r}")


def transfer_run_directory(config: TransferConfig, loaded) -> RunDirectory:
    """<pretraining run>/transfer/<config>-<weights digest>-<hash of the result-changing fields>."""
    root = Path(config.run.output_root or (Path(config.source.run_dir) / "transfer" if config.source.run_dir
                                           else Path("runs") / "transfer"))
    return RunDirectory.for_config(root, f"{config.config}-{loaded.digest[:8]}", config,
                                   (*NON_RESULT_FIELDS, "source.run_dir", "source.encoder_file", "coco_root",
                                    "train_json", "train_images", "val_json", "val_images"))


def dataset_files(config: TransferConfig) -> dict[str, Path]:
    """The COCO json and image folders to use; every missing one is named in the error."""
    if config.train_json:
        files = {"train_json": Path(config.train_json), "train_images": Path(config.train_images),
                 "val_json": Path(config.val_json), "val_images": Path(config.val_images)}
    else:
        root = Path(config.coco_root or Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "coco")
        files = {"train_json": root / "annotations" / "instances_train2017.json", "train_images": root / "train2017",
                 "val_json": root / "annotations" / "instances_val2017.json", "val_images": root / "val2017"}
    missing = [f"{name}: {path}" for name, path in files.items() if not path.exists()]
    if missing:
        raise FileNotFoundError("COCO files not found:\n  " + "\n  ".join(missing) + "\nSet coco_root=/path/to/coco "
                                "(holding annotations/, train2017/, val2017/) or DETECTRON2_DATASETS=/path/to/parent")
    return files


def dataset_classes(files: dict[str, Path]) -> list[str]:
    """The category names of the training json, in id order (detectron2 maps ids to contiguous
    class indices in that order). The validation json must name the same categories: otherwise
    the evaluator meets class ids it cannot map, after all the training."""
    def categories(path: Path) -> dict[int, str]:
        try:
            listed = json.loads(path.read_text()).get("categories") or []
            return {int(c["id"]): str(c["name"]) for c in listed}
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise ValueError(f"{path}: not a readable COCO-format json with categories ({error})") from None

    train, val = categories(files["train_json"]), categories(files["val_json"])
    if not train:
        raise ValueError(f"{files['train_json']} lists no categories")
    if val != train:
        raise ValueError(f"the validation json's categories differ from the training json's: "
                         f"train {train}, val {val} ({files['val_json']})")
    return [train[key] for key in sorted(train)]


def register_datasets(files: dict[str, Path]) -> None:
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    for name, json_key, images_key in ((TRAIN_NAME, "train_json", "train_images"), (VAL_NAME, "val_json", "val_images")):
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            from detectron2.data import MetadataCatalog

            MetadataCatalog.remove(name)
        register_coco_instances(name, {}, str(files[json_key]), str(files[images_key]))


def build_lazy_config(config: TransferConfig, loaded, run_dir: Path, num_classes: int = 80):
    """The LazyConfig of `config.config`, shaped to the checkpoint and the dataset's classes, and
    pointed at our data and paths."""
    from detectron2.config import LazyConfig
    from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

    cfg = LazyConfig.load(str(CONFIGS[config.config]))
    arguments = backbone_arguments(loaded.spec, config.num_heads)
    backbone = cfg.model.backbone
    net = backbone.bottom_up.net if "bottom_up" in backbone else backbone.net
    for key in ("embed_dim", "depth", "num_heads", "patch_size", "pretrain_img_size", "window_block_indexes"):
        net[key] = arguments[key]
    if "bottom_up" in backbone:
        backbone.bottom_up.stage_blocks = tuple(arguments["global_blocks"])
    cfg.optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=arguments["depth"],
                                                  lr_decay_rate=0.7)
    cfg.model.roi_heads.num_classes = num_classes  # the box and mask predictors follow it
    cfg.dataloader.train.dataset.names = TRAIN_NAME
    cfg.dataloader.test.dataset.names = VAL_NAME
    cfg.dataloader.evaluator.dataset_name = VAL_NAME
    cfg.dataloader.evaluator.tasks = ("bbox", "segm")
    cfg.dataloader.evaluator.output_dir = str(run_dir / "evaluation")
    cfg.train.output_dir = str(run_dir / "detectron2")
    cfg.train.init_checkpoint = str(run_dir / "backbone_init.pth")
    cfg.train.device = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.train.device == "cpu":
        cfg.train.amp.enabled = False  # detectron2's AMP trainer needs CUDA
    return LazyConfig.apply_overrides(cfg, config.overrides)


def backbone_prefix(cfg) -> str:
    return FPN_PREFIX if "bottom_up" in cfg.model.backbone else PREFIX


def evaluate_model(cfg, model) -> dict:
    from detectron2.config import instantiate
    from detectron2.evaluation import inference_on_dataset

    return inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))


def preemption_hook(checkpointer, device: str):
    """A detectron2 hook: after a recorded preemption signal (common.preemption), checkpoint at the
    next iteration boundary, which every rank agrees on, then requeue. One scalar all-reduce per
    iteration: detectron2 already synchronises every iteration to log its losses."""
    from detectron2.engine import HookBase

    class PreemptionHook(HookBase):
        def after_step(self) -> None:
            iteration = self.trainer.iter
            flag = torch.tensor(float(preemption.requested()), device=device)  # NCCL reduces CUDA tensors
            if dist.all_reduce_max(flag).item():
                if dist.is_main_process():
                    checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
                dist.barrier()
                preemption.hand_over()

    return PreemptionHook()


def ap_metrics(results: dict) -> tuple[dict, dict]:
    """(metrics, reasons): box and mask AP (pycocotools, percent) and every sub-metric; an AP that
    could not be computed is null in result.json, with the reason, never NaN (not JSON)."""
    metrics, reasons = {}, {}
    for task, name in (("bbox", "box"), ("segm", "mask")):
        values = {key: float(value) for key, value in results.get(task, {}).items()}
        headline = values.get("AP")
        if headline is None or not math.isfinite(headline):
            metrics[f"ap_{name}"], reasons[f"ap_{name}"] = None, NO_PREDICTIONS
        else:
            metrics[f"ap_{name}"] = headline
        metrics.update({f"{name}_{key}": value if math.isfinite(value) else None for key, value in values.items()})
    return metrics, reasons


def start_distributed() -> None:
    """DDP from the launcher's environment, and detectron2's per-machine process group."""
    from detectron2.utils import comm

    dist.init_distributed("cuda" if torch.cuda.is_available() else "cpu")
    if dist.is_distributed():
        comm.create_local_process_group(int(os.environ.get("LOCAL_WORLD_SIZE", torch.cuda.device_count() or 1)))


def finished_result(run_dir: RunDirectory) -> dict:
    """A complete run's result: it says so and does nothing."""
    if dist.is_main_process():
        print(f"[transfer] {run_dir.path} is complete; nothing to do (result: {run_dir.result_path})")
    return {**run_dir.read_result(), "run_dir": str(run_dir.path)}


def prepare_run(config: TransferConfig, run_dir: RunDirectory, loaded, prefix: str, output_dir: str) -> None:
    """Own the run directory (main process: lock, config, provenance, the converted backbone), then,
    on every process, detectron2's logger, the preemption handler and the seeds."""
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    if dist.is_main_process():
        run_dir.acquire(config.run.wait_for_lock)
        run_dir.prepare(config, dist.world_size())
        write_detectron2_checkpoint(loaded, run_dir.path / "backbone_init.pth", prefix)
    dist.barrier()
    setup_logger(output_dir, distributed_rank=dist.rank(), name="detectron2")
    if preemption.can_install():
        preemption.install()
    # Head initialisation, sampling order and augmentations draw from the seeded generators (the
    # sampler's shared seed comes from rank 0's numpy generator).
    seed_all_rng(config.run.seed + dist.rank())


@dataclass
class Training:
    """What detectron2 trains: the detector (its DDP wrapper `model`), its trainer and checkpointer,
    and the backbone weights it must start from (detectron2 names)."""

    detector: torch.nn.Module
    model: torch.nn.Module
    trainer: object
    checkpointer: object
    expected_backbone: dict
    evaluations: dict[int, dict] = field(default_factory=dict)  # iteration -> detectron2's periodic evaluations


def build_training(cfg, loaded, prefix: str) -> Training:
    """The detector, optimiser, data loader, trainer and checkpointer of the LazyConfig; the detector's
    backbone names and shapes are checked against the encoder's before anything trains."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate
    from detectron2.engine import AMPTrainer, SimpleTrainer, create_ddp_model

    detector = instantiate(cfg.model).to(cfg.train.device)
    expected = to_detectron2(loaded.state_dict, prefix)
    check_backbone_loaded(detector.state_dict(), expected, prefix, compare_values=False)  # names and shapes
    cfg.optimizer.params.model = detector
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(detector, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    return Training(detector, model, trainer, checkpointer, expected)


def register_hooks(cfg, training: Training) -> None:
    """detectron2's usual hooks, the preemption hook, and periodic evaluations kept by iteration."""
    from detectron2.config import instantiate
    from detectron2.engine import default_writers, hooks

    def evaluate_during_training() -> dict:
        training.evaluations[training.trainer.iter] = evaluate_model(cfg, training.model)
        return training.evaluations[training.trainer.iter]

    training.trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(training.checkpointer, **cfg.train.checkpointer) if dist.is_main_process() else None,
        preemption_hook(training.checkpointer, cfg.train.device),
        hooks.EvalHook(cfg.train.eval_period, evaluate_during_training) if cfg.train.eval_period else None,
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter), period=cfg.train.log_period)
        if dist.is_main_process() else None,
    ])


def train(cfg, training: Training, prefix: str) -> int | None:
    """Resume from detectron2's last checkpoint, else start from the converted backbone, and train to
    max_iter. Returns the iteration resumed at (None for a fresh start)."""
    resumed = training.checkpointer.has_checkpoint()
    training.checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=True)
    if not resumed:  # detectron2 skips a tensor of another shape with a log line: compare what it loaded
        check_backbone_loaded(training.detector.state_dict(), training.expected_backbone, prefix)
    start_iter = training.trainer.iter + 1 if resumed else 0
    if start_iter < cfg.train.max_iter:
        training.trainer.train(start_iter, cfg.train.max_iter)
    return start_iter if resumed else None


def final_results(cfg, training: Training) -> dict:
    """COCOEvaluator's results of the final weights. The EvalHook already evaluated them when it is on
    (in after_train, where the trainer's iter equals max_iter); evaluate once otherwise."""
    final = cfg.train.max_iter
    return training.evaluations[final] if final in training.evaluations else evaluate_model(cfg, training.model)


def write_result(config: TransferConfig, run_dir: RunDirectory, loaded, cfg, classes: list[str], results: dict,
                 resumed_from: int | None) -> dict:
    """result.json (main process) with box and mask AP, and a line saying them."""
    metrics, reasons = ap_metrics(results)
    record = {"stage": "transfer", "config": config.config, "experiment": config.run.experiment,
              "source": loaded.description, "source_digest": loaded.digest, **loaded.origin,
              "resumed_from_iteration": resumed_from, "max_iter": cfg.train.max_iter,
              "classes": classes, "metrics": metrics, **({"missing_metrics": reasons} if reasons else {})}
    if dist.is_main_process():
        run_dir.write_result(record)
        shown = ", ".join(f"{name} AP {'—' if metrics[f'ap_{name}'] is None else format(metrics[f'ap_{name}'], '.2f')}"
                          for name in ("box", "mask"))
        print(f"[transfer] {shown}; done: {run_dir.path}" + (f" ({NO_PREDICTIONS})" if reasons else ""))
    dist.barrier()
    return {**record, "run_dir": str(run_dir.path)}


@releases_run_locks
def main(config: TransferConfig) -> dict:
    require_detectron2()
    start_distributed()
    loaded = load_encoder(config.source.run_dir, config.source.encoder_file, config.source.encoder)
    backbone_arguments(loaded.spec, config.num_heads)  # an encoder the backbones cannot take fails before any write
    run_dir = transfer_run_directory(config, loaded)
    if run_dir.is_complete():
        return finished_result(run_dir)
    files = dataset_files(config)  # before any work: missing COCO files fail here
    classes = dataset_classes(files)
    register_datasets(files)
    cfg = build_lazy_config(config, loaded, run_dir.path, len(classes))
    prefix = backbone_prefix(cfg)
    prepare_run(config, run_dir, loaded, prefix, cfg.train.output_dir)
    training = build_training(cfg, loaded, prefix)
    register_hooks(cfg, training)
    resumed_from = train(cfg, training, prefix)
    return write_result(config, run_dir, loaded, cfg, classes, final_results(cfg, training), resumed_from)
