"""End-to-end pretraining throughput from JPEG files on disk (bench/gpu_check.py, `make gpu-check`).

    python -m bench.end_to_end --config vit_s16_224 --variant compiled --folder /scratch/jpegs --output e2e.json

It writes an ImageFolder of photo-like JPEGs (the generator of bench/augment.py; ImageNet itself is
not needed), pretrains from it with the step of bench/pretrain_step.py's config (same preset, batch,
m = 2, no local crops, same speed switches) and the preset's own input pipeline and loader workers,
and reads img/s from the run's metrics records after a warm-up (compilation, first loader batches).
Divided by that config's synthetic-input step measured in the same check, it says how much of the
step speed survives reading, decoding and augmenting real files.
"""
from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from bench.augment import jpeg_pool
from bench.pretrain_step import CONFIGS, step_overrides
from bench.timing import emit_report
from common.config import apply_overrides
from pretrain.configs import preset

CLASSES = 10  # class folders of the generated ImageFolder (pretraining reads no labels)


@dataclass(frozen=True)
class EndToEndSize:
    """How much to generate and train: `warmup_steps` untimed, then `timed_steps` timed."""

    config: str  # a bench.pretrain_step config name
    variant: str  # its speed variant (bench.pretrain_step.VARIANTS)
    source_size: tuple[int, int]  # (width, height) of the JPEG files
    warmup_steps: int
    timed_steps: int
    log_every_steps: int

    @property
    def steps(self) -> int:
        return self.warmup_steps + self.timed_steps

    @property
    def files(self) -> int:
        # One epoch holds every step (plus one batch): the loader restarts its workers at each epoch,
        # which a 10,000-step ImageNet epoch amortises but a short measurement would not.
        return CONFIGS[self.config].batch * (self.steps + 1)


def write_image_folder(root: Path, count: int, source_size: tuple[int, int]) -> int:
    """`count` JPEG files in `root`/train/class<k>/ (cycling over bench.augment's pool of distinct
    photo-like JPEGs, so writing is I/O only). Returns the bytes written."""
    blobs = jpeg_pool(*source_size)
    written = 0
    for index in range(count):
        folder = root / "train" / f"class{index % CLASSES}"
        if index < CLASSES:
            folder.mkdir(parents=True, exist_ok=True)
        blob = blobs[index % len(blobs)]
        (folder / f"{index:07d}.jpg").write_bytes(blob)
        written += len(blob)
    return written


def pretraining_config(size: EndToEndSize, data_root: Path, output_root: Path, device: str):
    """The preset of `size.config` with the benchmarked step, reading `data_root` as an ImageFolder
    through the preset's own input pipeline, stopping after `size.steps` steps."""
    spec = CONFIGS[size.config]
    return apply_overrides(preset(spec.preset), [
        *step_overrides(size.config, size.variant), "data.dataset=imagefolder", f"data.root={data_root}",
        f"optim.max_steps={size.steps}", f"run.device={device}", f"run.output_root={output_root}",
        f"run.log_every_steps={size.log_every_steps}", "run.checkpoint_every_steps=1000000",
        "run.progress=false", "run.loggers=[]"])


def throughput(records: list[dict], batch: int, warmup_steps: int) -> dict:
    """img/s between the first metrics record at or after `warmup_steps` and the last one (records
    carry the step and the wall time at which it was logged, after the device synchronised)."""
    timed = [record for record in records if record["step"] >= warmup_steps]
    if len(timed) < 2 or timed[-1]["time"] <= timed[0]["time"]:
        raise ValueError(f"need two metrics records after step {warmup_steps}, found {len(timed)}")
    steps = timed[-1]["step"] - timed[0]["step"]
    seconds = timed[-1]["time"] - timed[0]["time"]
    return {"img_per_s": steps * batch / seconds, "timed_steps": steps, "timed_seconds": seconds,
            "from_step": timed[0]["step"], "to_step": timed[-1]["step"]}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def measure(size: EndToEndSize, folder: Path, device: str, keep_files: bool = False) -> dict:
    """Generate the files, pretrain from them, return img/s and how the run was made."""
    from pretrain.train import main as pretrain_main  # the training loop, only when measuring

    folder.mkdir(parents=True, exist_ok=True)
    data_root, runs = folder / "images", folder / "runs"
    # A fresh run: the same config and files would otherwise find the previous run complete.
    for stale in (data_root, runs):
        shutil.rmtree(stale, ignore_errors=True)
    written = write_image_folder(data_root, size.files, size.source_size)
    config = pretraining_config(size, data_root, runs, device)
    try:
        result = pretrain_main(config)
        measured = throughput(read_metrics(Path(result["run_dir"])), CONFIGS[size.config].batch, size.warmup_steps)
    finally:
        if not keep_files:
            shutil.rmtree(data_root, ignore_errors=True)  # gigabytes at the gpu size
    return {**measured, "config": size.config, "variant": size.variant, "preset": CONFIGS[size.config].preset,
            "batch_per_device": CONFIGS[size.config].batch, "files": size.files,
            "mean_file_kib": round(written / size.files / 1024, 1), "source_size": list(size.source_size),
            "loader_workers": config.data.num_workers, "augment_gpu": config.augment.gpu,
            "augment_gpu_decode": config.augment.gpu_decode, "run_dir": result["run_dir"]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.end_to_end")
    parser.add_argument("--config", default="debug", help=f"one of {', '.join(CONFIGS)}")
    parser.add_argument("--variant", default="batched")
    parser.add_argument("--source-size", default="500x375", help="WIDTHxHEIGHT of the generated JPEGs")
    parser.add_argument("--warmup-steps", type=int, default=40)
    parser.add_argument("--timed-steps", type=int, default=200)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--folder", type=Path, default=Path("runs/bench/end_to_end"))
    parser.add_argument("--output", type=Path)
    arguments = parser.parse_args()
    source_size = tuple(int(side) for side in arguments.source_size.lower().split("x"))
    size = EndToEndSize(arguments.config, arguments.variant, source_size, arguments.warmup_steps,
                        arguments.timed_steps, arguments.log_every)
    emit_report(measure(size, arguments.folder, arguments.device), arguments.output)


if __name__ == "__main__":
    main()
