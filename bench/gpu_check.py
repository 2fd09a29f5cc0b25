"""Every measurement that needs a GPU, in one command with one time budget: `make gpu-check OUT=folder`.

    python -m bench.gpu_check --out runs/gpu-check              # one H200: about 10.5 minutes
    python -m bench.gpu_check --scale tiny --out /tmp/check     # the same code on the CPU, well under a minute
    python -m bench.gpu_check --dry-run                         # sizes and budgets, configs resolved, nothing run
    python -m bench.gpu_check --parts study --budget study=600  # one part, with another budget

In order: (1) the `make bench` figures -- the compiled pretraining steps of ViT-S/16, ViT-S/2, ViT-T/2
and ViT-B/16 (each with the plain timm encoder-only bound measured in the same process as its
baseline), the input pipeline (device decoding against the PIL path of the same run) and the
ImageNet-size kNN search (fp16 against fp32); (2) the end-to-end figure: pretraining from JPEG files
written to disk, as a fraction of the synthetic-input step of the same config; (3) Table 6 on
Fashion-MNIST at the gpu scale (m = 1..4, three seeds, kNN and linear probe), its report with the
paper's claims and verdicts, and the kNN lift of pretraining over a randomly initialised encoder.

Each part runs in a forked child process (bench/isolated.py) with its own time budget; a part over
its budget is killed and its figures say so, so the whole check ends within the sum of the budgets.
It prints one line per figure with its target and writes `gpu_check.json`, each part's raw result
(`parts/`) and the study's report (`study/`) under --out; generated images and run directories go
under --work (the study reuses the completed runs it finds there: delete it for a fresh study).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench import augment, end_to_end, knn, pretrain_step, study
from bench.end_to_end import EndToEndSize
from bench.isolated import Outcome, run_isolated
from bench.study import StudySize
from common.config import apply_overrides
from common.rundir import code_identity
from pretrain.configs import preset


@dataclass(frozen=True)
class StepSize:
    """The step benchmark of one scale: which bench.pretrain_step config stands for each figure."""

    configs: dict[str, str]  # figure name (S/16, S/2, T/2, B/16) -> bench.pretrain_step config
    variant: str
    warmup: int
    steps: int
    profiled_steps: int


@dataclass(frozen=True)
class AugmentSize:
    image_size: int
    batch: int
    pil_batches: int  # the PIL path is ~5x slower: fewer batches for the same seconds
    device_batches: int
    source_size: tuple[int, int]
    workers: int
    compiled: bool


@dataclass(frozen=True)
class Scale:
    """Everything a scale runs, and each part's budget in seconds."""

    name: str
    device: str  # cuda | cpu
    steps: StepSize
    augmentation: AugmentSize
    knn_size: str  # bench.knn.SIZES
    knn_repeats: int
    end_to_end: EndToEndSize
    study: StudySize
    budgets: dict[str, float] = field(default_factory=dict)


# How the gpu scale is sized. No GPU was lent when this was written, so the budgets are estimates from
# the H200 figures in README "Benchmarks" and recipes.md "Measured anchors", with the unmeasured costs
# (start-up, compilation) assumed; gpu_check.json records each part's seconds, so the first run on a
# device measures the budgets themselves, and --budget PART=SECONDS changes one.
# - steps, 60 s per config in its own process: start-up, model build and compilation (assumed under
#   45 s; compile time has not been measured here), 5 warm-up + 20 timed + 3 profiled steps (under 3 s
#   at the measured 55-110 ms per compiled step), the FLOP count and the eager encoder-only bound.
# - augmentation, 40 s: PIL 48 x 128 images (7 s at the measured 840 img/s), device decoding 200 x 128
#   (6 s at the measured 4,400 img/s), worker start-up and compiling the colour augmentations.
# - kNN, 30 s: the 1.28M x 384 bank generated on the CPU, then fp16 and fp32 searches (0.64 s and
#   1.72 s measured) x (warm-up + 3 repeats), about 10 s of searching.
# - end to end, 80 s: 30,848 JPEG files written (2.8 GB at the pool's ~92 KB; copies of 128 distinct
#   ones), start-up, the same step compiled again (inductor's cache is warm from the step part), 240
#   steps of 128 images: 12 s at the compiled step's measured 2,552 img/s, and the budget still holds
#   if the files feed only ~1,000 img/s (31 s).
# - study, 240 s: 12 pretraining runs of 2 epochs of the 60,000 images with the colour augmentations on
#   the device and 14 loader workers cropping and flipping. One core did that at 1,276 img/s on the
#   2-core CI machine (585 img/s for the whole PIL pipeline): 14 such workers, ~18,000 img/s; taking
#   ~10,000 for safety, ~12 s per run, plus ~6 s (assumed) for its kNN and its linear probe (cached
#   features, 10 epochs), and as much (assumed) for each seed's random-initialisation row (kNN and
#   linear, 3 x 6 s); 40 s kept for the report. Compilation is off: the
#   eager step of this 4-block ViT is not what limits it (the loader is), and compiling 12 runs would
#   cost more than it saves. Two epochs are far from the preset's 100; the kNN-lift figure says whether
#   they are enough (target: 15 points over random init), and --budget study=... with
#   --study-set optim.epochs=N sizes a longer study.
# The sum, 630 s, leaves 30 s of the 11 minutes for start-up and writing the results.
GPU = Scale(
    name="gpu", device="cuda",
    steps=StepSize({"S/16": "vit_s16_224", "S/2": "vit_s2_32", "T/2": "vit_t2_32", "B/16": "vit_b16_224"},
                   "compiled", warmup=5, steps=20, profiled_steps=3),
    augmentation=AugmentSize(224, 128, pil_batches=48, device_batches=200, source_size=(500, 375),
                             workers=os.cpu_count() or 1, compiled=True),
    knn_size="imagenet", knn_repeats=3,
    end_to_end=EndToEndSize("vit_s16_224", "compiled", (500, 375), warmup_steps=40, timed_steps=200,
                            log_every_steps=10),
    study=StudySize("fashion_mnist_gpu", (0, 1, 2),
                    pretrain_overrides=("optim.epochs=2", "optim.warmup_epochs=1", "model.compile=false",
                                        "augment.gpu=true", "data.num_workers=14", "run.loggers=[]",
                                        "run.progress=false"),
                    eval_overrides=("linear.augment=false", "linear.epochs=10", "data.num_workers=14",
                                    "run.loggers=[]", "run.progress=false"),
                    generated_images=0, reserve_s=40),
    budgets={"step:vit_s16_224": 60, "step:vit_s2_32": 60, "step:vit_t2_32": 60, "step:vit_b16_224": 60,
             "augmentation": 40, "knn": 30, "end_to_end": 80, "study": 240},
)
# The same code on the CPU at toy sizes (CI's smoke test, ~35 s on 2 cores): one tiny config stands
# for every step figure, a few small JPEGs, 256 generated Fashion-MNIST-shaped images and two seeds
# (the fewest the paired statistics take; 36 stages with three seeds took 30 s, most of the test).
# The budgets are ceilings only.
TINY = Scale(
    name="tiny", device="cpu",
    steps=StepSize({"S/16": "debug", "S/2": "debug", "T/2": "debug", "B/16": "debug"}, "batched",
                   warmup=1, steps=2, profiled_steps=1),
    augmentation=AugmentSize(32, 8, pil_batches=2, device_batches=2, source_size=(64, 48), workers=0,
                             compiled=False),
    knn_size="tiny", knn_repeats=1,
    end_to_end=EndToEndSize("debug", "batched", (64, 48), warmup_steps=2, timed_steps=3, log_every_steps=1),
    study=StudySize("fashion_mnist_gpu", (0, 1),
                    pretrain_overrides=("model.arch=vit_debug", "model.projector_hidden_dim=64",
                                        "model.predictor_hidden_dim=64", "model.output_dim=32",
                                        "optim.batch_size=64", "optim.epochs=1", "optim.warmup_epochs=0",
                                        "model.compile=false", "augment.gpu=true", "data.num_workers=0",
                                        "run.precision=fp32", "run.device=cpu", "run.loggers=[]",
                                        "run.progress=false"),
                    eval_overrides=("linear.augment=false", "linear.epochs=2", "data.num_workers=0",
                                    "run.device=cpu", "run.loggers=[]", "run.progress=false"),
                    generated_images=256, reserve_s=60),
    budgets={"step:debug": 120, "augmentation": 120, "knn": 60, "end_to_end": 120, "study": 300},
)
SCALES = {"gpu": GPU, "tiny": TINY}


@dataclass(frozen=True)
class Figure:
    """One line of the check: `value` is compared with `target` by `comparison` (>= or <=)."""

    name: str
    label: str
    unit: str
    target: float
    comparison: str
    parts: tuple[str, ...]  # the parts it needs


def figures(scale: Scale) -> list[Figure]:
    """The targets of the speed round, and the study's, in the order they print."""
    steps, variant = scale.steps.configs, scale.steps.variant

    def step(name: str, key: str, what: str, unit: str, target: float) -> Figure:
        return Figure(name, f"{key} step{what} ({steps[key]}, {variant})", unit, target, ">=", (f"step:{steps[key]}",))

    return [
        step("step_s16", "S/16", "", "img/s", 3150),
        step("step_s2", "S/2", "", "img/s", 3000),
        step("step_t2", "T/2", "", "img/s", 5800),
        step("mfu_b16", "B/16", " MFU", "fraction of peak", 0.40),
        Figure("augmentation", "input pipeline (device decode + colour)", "img/s", 8000, ">=", ("augmentation",)),
        Figure("end_to_end", f"end to end from JPEG files ({scale.end_to_end.config})",
               "fraction of the synthetic step", 0.90, ">=", ("end_to_end", f"step:{scale.end_to_end.config}")),
        Figure("knn", "kNN search ({:,} x {:,}, {}-d)".format(*knn.SIZES[scale.knn_size]), "s", 1.0, "<=",
               ("knn",)),
        Figure("study_knn_lift", f"Table 6 kNN lift over random init (weakest row, {scale.study.dataset})",
               "points", 15, ">=", ("study",)),
    ]


# ---- the parts: each returns a JSON-serialisable dict, run in its own forked child ----

def _device(scale: Scale):
    import torch

    return torch.device(scale.device)


def step_part(scale: Scale, config: str) -> Callable[[], dict]:
    def run() -> dict:
        device = _device(scale)
        result = pretrain_step.bench_config(config, device, scale.steps.warmup, scale.steps.steps, scale.steps.variant,
                                            with_bound=True, profiled_steps=scale.steps.profiled_steps)
        if result["mfu"] is None:  # no published peak for this device: the measured matmul speed instead
            peak = pretrain_step.measured_matmul_flops(device)
            result.update(mfu=result["gflop_per_image"] * 1e9 * result["img_per_s"] / peak, mfu_peak_flops=peak,
                          mfu_peak="measured square matmul on this device")
        else:
            result["mfu_peak"] = "published dense bf16 peak (bench/pretrain_step.PEAK_BF16_FLOPS)"
        return result
    return run


def augmentation_part(scale: Scale) -> dict:
    size, device = scale.augmentation, _device(scale)
    pil = augment.measure("pil", size.image_size, size.workers, size.batch, size.pil_batches, device,
                          size.source_size)
    decoded = augment.measure("gpu_decode", size.image_size, size.workers, size.batch, size.device_batches, device,
                              size.source_size, compiled=size.compiled)
    return {"pil": pil, "gpu_decode": decoded}


def knn_part(scale: Scale) -> dict:
    return knn.run(scale.knn_size, scale.knn_repeats)


def end_to_end_part(scale: Scale, work: Path) -> dict:
    return end_to_end.measure(scale.end_to_end, work / "end_to_end", scale.device)


def study_part(scale: Scale, work: Path, out: Path, budget_s: float, data_overrides: tuple[str, ...]) -> dict:
    return study.measure(scale.study, work / "study", out / "study", budget_s, data_overrides)


def parts_of(scale: Scale, budgets: dict[str, float], work: Path, out: Path,
             data_overrides: tuple[str, ...]) -> dict[str, Callable[[], dict]]:
    """Part name -> what it runs, in the order the check runs them."""
    parts: dict[str, Callable[[], dict]] = {}
    for config in dict.fromkeys(scale.steps.configs.values()):  # each distinct config once
        parts[f"step:{config}"] = step_part(scale, config)
    parts["augmentation"] = lambda: augmentation_part(scale)
    parts["knn"] = lambda: knn_part(scale)
    parts["end_to_end"] = lambda: end_to_end_part(scale, work)
    parts["study"] = lambda: study_part(scale, work, out, budgets["study"], data_overrides)
    return parts


# ---- from part results to figures ----

def _step_value(figure: Figure, result: dict) -> dict:
    bound = result["encoder_bound_img_per_s"]
    value = result["mfu"] if figure.name == "mfu_b16" else result["img_per_s"]
    return {"value": value, "baseline": {"name": "plain timm encoder-only bound, eager (same process)",
                                         "value": bound, "unit": "img/s"},
            "ratio_to_baseline": result["img_per_s"] / bound,
            "details": {key: result.get(key) for key in ("img_per_s", "mfu", "mfu_peak", "s_per_step",
                                                          "peak_memory_gib", "compiled_graphs", "gflop_per_image",
                                                          "published_h200_img_per_s", "losses_finite")}}


def _augmentation_value(results: dict) -> dict:
    device, pil = results["augmentation"]["gpu_decode"]["img_per_s"], results["augmentation"]["pil"]["img_per_s"]
    return {"value": device, "baseline": {"name": "PIL path, same run", "value": pil, "unit": "img/s"},
            "ratio_to_baseline": device / pil}


def _end_to_end_value(results: dict, scale: Scale) -> dict:
    files = results["end_to_end"]["img_per_s"]
    synthetic = results[f"step:{scale.end_to_end.config}"]["img_per_s"]
    return {"value": files / synthetic, "baseline": {"name": "synthetic-input step of the same config, same run",
                                                     "value": synthetic, "unit": "img/s"},
            "ratio_to_baseline": files / synthetic, "details": {**results["end_to_end"], "files_img_per_s": files}}


def _knn_value(results: dict) -> dict:
    rows = [row for row in results["knn"]["results"] if row["backend"] == "torch"]
    fast = next((row for row in rows if row["half_precision"]), rows[0])
    full = next((row for row in rows if not row["half_precision"] and row is not fast), None)
    report = results["knn"]
    return {"value": fast["seconds_best"], "details": {"bank": report["bank"], "queries": report["queries"],
                                                       "dim": report["dim"], "half_precision": fast["half_precision"],
                                                       "device": fast["device"], "all": report["results"]},
            "baseline": ({"name": "torch fp32 search, same run", "value": full["seconds_best"], "unit": "s"}
                         if full else None),
            "ratio_to_baseline": fast["seconds_best"] / full["seconds_best"] if full else None}


def _study_value(results: dict) -> dict:
    result = results["study"]
    if result["lift_min"] is None:  # the plan or its report left no row with a kNN lift: nothing to compare
        return {"value": None, "not_measured": f"no row has a kNN lift (plan {result['plan_status']}, "
                                               f"report {result['report_status']})", "details": result}
    return {"value": result["lift_min"], "baseline": {"name": "kNN of the plan's random-initialisation row (the m = 1 "
                                                              "runs' initial weights, mean over seeds)",
                                                      "value": result["random_init_knn"],
                                                      "unit": "top-1 %"},
            "ratio_to_baseline": None, "details": result}


def figure_value(figure: Figure, results: dict, scale: Scale) -> dict:
    if figure.name.startswith(("step_", "mfu_")):
        return _step_value(figure, results[figure.parts[0]])
    return {"augmentation": _augmentation_value, "knn": _knn_value, "study_knn_lift": _study_value,
            "end_to_end": lambda r: _end_to_end_value(r, scale)}[figure.name](results)


def passed(value: float | None, figure: Figure) -> bool | None:
    if value is None:
        return None
    return value >= figure.target if figure.comparison == ">=" else value <= figure.target


def evaluate_figure(figure: Figure, outcomes: dict[str, Outcome], scale: Scale) -> dict:
    """The figure's record: value, target, pass/fail (None when a part it needs did not finish)."""
    record = {"name": figure.name, "label": figure.label, "unit": figure.unit, "target": figure.target,
              "comparison": figure.comparison, "scale": scale.name}
    missing = [f"{part}: {outcomes[part].status if part in outcomes else 'not run'}" for part in figure.parts
               if part not in outcomes or outcomes[part].status != "ok"]
    if missing:
        return {**record, "value": None, "passed": None, "not_measured": "; ".join(missing)}
    results = {part: outcomes[part].result for part in figure.parts}
    try:
        measured = figure_value(figure, results, scale)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, StopIteration, IndexError) as error:
        return {**record, "value": None, "passed": None, "not_measured": f"unreadable result: {error!r}"}
    return {**record, **measured, "passed": passed(measured["value"], figure)}


def line(figure: dict) -> str:
    """`label: value unit (target >= x): PASS | FAIL | NOT MEASURED (why)` plus the baseline ratio."""
    target = f"target {figure['comparison']} {figure['target']:g} {figure['unit']}"
    if figure["value"] is None:
        return f"{figure['label']}: not measured ({figure['not_measured']}); {target}"
    verdict = "PASS" if figure["passed"] else "FAIL"
    text = f"{figure['label']}: {figure['value']:.4g} {figure['unit']}; {target}: {verdict}"
    baseline = figure.get("baseline")
    if baseline and baseline.get("value") is not None:
        ratio = figure.get("ratio_to_baseline")
        text += f" (baseline {baseline['name']}: {baseline['value']:.4g} {baseline['unit']}"
        text += f", ratio {ratio:.3g})" if ratio is not None else ")"
    return text


# ---- the command ----

def probe_device() -> dict:
    """Which device the children will see, asked in a child: the parent never initialises CUDA, so
    that every forked part can."""
    import torch

    available = torch.cuda.is_available()
    return {"cuda": available, "name": torch.cuda.get_device_name(0) if available else "cpu",
            "torch": torch.__version__}


def parse_budgets(items: list[str], scale: Scale) -> dict[str, float]:
    budgets = dict(scale.budgets)
    for item in items:
        name, _, seconds = item.partition("=")
        if name not in budgets or not seconds:
            raise SystemExit(f"error: --budget {item!r}: expected PART=SECONDS with PART one of {', '.join(budgets)}")
        budgets[name] = float(seconds)
    return budgets


def selected_parts(names: str, available: dict) -> list[str]:
    if not names:
        return list(available)
    chosen = [name.strip() for name in names.split(",") if name.strip()]
    expanded = [part for name in chosen for part in available if part == name or part.startswith(f"{name}:")]
    unknown = [name for name in chosen if not any(p == name or p.startswith(f"{name}:") for p in available)]
    if unknown:
        raise SystemExit(f"error: unknown parts {unknown}; choose from {', '.join(available)} (or 'step')")
    return expanded


def dry_run(scale: Scale, budgets: dict[str, float], work: Path, data_overrides: tuple[str, ...]) -> None:
    """Print what would run and check that its configs resolve (the end-to-end config, the study's
    plan through the launcher's own --dry-run), running nothing."""
    print(f"scale {scale.name} on {scale.device}; budgets (s): {json.dumps(budgets)}; "
          f"total {sum(budgets.values()):g} s")
    print(f"steps: {scale.steps}\naugmentation: {scale.augmentation}\nknn: {scale.knn_size}\n"
          f"end to end: {scale.end_to_end} ({scale.end_to_end.files} files)\nstudy: {scale.study}")
    for config in dict.fromkeys(scale.steps.configs.values()):  # the benchmarked steps' configs resolve
        apply_overrides(preset(pretrain_step.CONFIGS[config].preset),
                        pretrain_step.step_overrides(config, scale.steps.variant))
    end_to_end.pretraining_config(scale.end_to_end, work / "end_to_end" / "images", work / "end_to_end" / "runs",
                                  scale.device)
    for figure in figures(scale):
        print(f"figure {figure.name}: {figure.label}, target {figure.comparison} {figure.target:g} {figure.unit}")
    import subprocess

    command = study.plan_command(scale.study, work / "study" / "runs", data_overrides, dry_run=True)
    completed = subprocess.run(command, capture_output=True, text=True)
    print(completed.stdout.strip().splitlines()[-1] if completed.stdout.strip() else completed.stderr.strip())
    if completed.returncode:
        raise SystemExit(completed.returncode)


def run_check(scale: Scale, parts: list[str], budgets: dict[str, float], out: Path, work: Path,
              data_overrides: tuple[str, ...]) -> dict:
    """Run the chosen parts in order, each in its own child within its budget; the record of the check."""
    available = parts_of(scale, budgets, work, out, data_overrides)
    outcomes: dict[str, Outcome] = {}
    started = time.time()
    for name in parts:
        print(f"[gpu-check] {name} (budget {budgets[name]:g} s)", flush=True)
        outcome = run_isolated(available[name], budgets[name], out / "parts" / f"{name.replace(':', '_')}.json")
        outcomes[name] = outcome
        print(f"[gpu-check] {name}: {outcome.status} in {outcome.seconds:.1f} s"
              + (f"\n{outcome.error}" if outcome.error else ""), flush=True)
    records = [evaluate_figure(figure, outcomes, scale) for figure in figures(scale)]
    return {"check": "gpu_check", "scale": scale.name,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 1), "budget_s": sum(budgets[name] for name in parts),
            **code_identity(), "parts": {name: outcome.as_record() for name, outcome in outcomes.items()},
            "figures": records}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="gpu", help="gpu: one H200; tiny: CPU smoke sizes")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"), help="JSON, parts' results and reports")
    parser.add_argument("--work", type=Path, default=Path("runs/gpu-check-work"),
                        help="generated images and run directories, kept out of OUT (gigabytes of JPEGs while the "
                             "end-to-end part runs); completed study runs found there are reused")
    parser.add_argument("--parts", default="", help="comma-separated subset (step, step:CONFIG, augmentation, knn, "
                                                    "end_to_end, study); default: all, in order")
    parser.add_argument("--budget", nargs="*", default=[], metavar="PART=SECONDS", help="another budget for a part")
    parser.add_argument("--study-set", nargs="*", default=[], metavar="key=value",
                        help="more pretraining overrides for the study, e.g. data.root=/datasets/fashion-mnist")
    parser.add_argument("--dry-run", action="store_true", help="print sizes and budgets, resolve configs, run nothing")
    arguments = parser.parse_args(argv)
    scale = SCALES[arguments.scale]
    work = arguments.work
    budgets = parse_budgets(arguments.budget, scale)
    data_overrides = tuple(arguments.study_set)
    if arguments.dry_run:
        dry_run(scale, budgets, work, data_overrides)
        return
    parts = selected_parts(arguments.parts, parts_of(scale, budgets, work, arguments.out, data_overrides))
    probe = run_isolated(probe_device, 120, arguments.out / "parts" / "device.json")
    if scale.device == "cuda" and not (probe.result or {}).get("cuda"):
        print("error: the gpu scale needs a CUDA device (none is visible); --scale tiny runs the same code on the CPU",
              file=sys.stderr)
        raise SystemExit(2)
    record = {**run_check(scale, parts, budgets, arguments.out, work, data_overrides), "device": probe.result}
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / "gpu_check.json").write_text(json.dumps(record, indent=2, default=str))
    print(f"\n[gpu-check] {scale.name} scale on {(probe.result or {}).get('name')}, {record['seconds']:g} s "
          f"(budget {record['budget_s']:g} s):")
    for figure in record["figures"]:
        print(f"  {line(figure)}")
    for claim in next((f.get("details", {}).get("claims", []) for f in record["figures"]
                       if f["name"] == "study_knn_lift"), []):
        print(f"  claim: {claim['claim']} [{claim['protocol']}]: {claim['verdict']} ({claim['paired_difference']})")
    print(f"[gpu-check] wrote {arguments.out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
