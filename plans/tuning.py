"""One tuning procedure for every method: the same budget of short trials for each, ranked on a
validation split held out of the training set, never on the test set.

Each pretraining method declares the few hyperparameters it is sensitive to and their candidate values
(`tuning_space` in pretrain/methods/<method>.py). Every tuned method -- PatchMix, MoCo v3 (PatchMix's
space with m = 1, tuned as a method of its own), DINO and SDMP -- gets the same number of points drawn
from its grid (`balanced_sample`: seeded, each candidate value of each key tried equally often, give or
take one, the scaled published recipe's point always among them), and each point is a trial: the method's
preset at the scale, the point's overrides, the validation split and a short schedule, the same for every method
(`TrialSchedule`), then a kNN evaluation whose queries are the validation images and whose bank is the
training images the trial pretrained on. The best trial of each method by validation kNN becomes its preset for that scale
(reports/tuning.py writes the table and names the choice; TUNED_POINTS in the method's file sets it).

Both the plan (`tune`, plans/tables.py) and the report build their trials here.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Callable

from plans.registry import baseline_preset, stage_record
from pretrain.configs import FASHION_MNIST_SCALES
from pretrain.methods import dino, method_named, patchmix, sdmp
from pretrain.shared_config import PretrainConfig

# The budget: the same number of trials for every method, one seed each (`make tune SEEDS=0,1` adds seeds:
# each point is then ranked by its mean over them).
TRIALS_PER_METHOD = 8
SAMPLE_SEED = 0  # the draw of the points: fixed, so PatchMix and MoCo v3 (one space) try the same points
# Held out of the training set: as many images as the test images the cpu-scale study reports on (2,000),
# so a trial's kNN is about as precise as the study's; the trial trains on as many images as the preset.
VALIDATION_IMAGES = 2000
TRIAL_EPOCH_FRACTION = 0.5  # a trial trains half the scale's epochs (cpu: 10 of 20)
VALIDATION_KNN = ("knn.split=validation",)  # the trials' evaluation: kNN with the validation images as queries
SCALES = {"fashion_mnist": "cpu", "fashion_mnist_gpu": "gpu"}  # the plans' dataset tokens


@dataclass(frozen=True)
class TunedMethod:
    """One entry of the tuning: the pretraining method whose `tuning_space` is searched, the preset each of
    its trials starts from, the preset its chosen point becomes, and the scaled published recipe whose
    point is always one of the trials."""

    label: str  # its name in the reports
    method: str  # the pretraining method (pretrain/methods/)
    preset: str  # the trials' preset without its flavour; {scale} is the Fashion-MNIST scale (cpu | gpu)
    tuned_preset: str = ""  # the preset that takes the chosen point (the study's row); "": `preset`
    # (scale, flavour) -> the scaled recipe before tuning; None: the trials' preset is the starting point
    recipe: Callable[[str, str], PretrainConfig] | None = None

    def start(self, scale: str, flavour: str) -> PretrainConfig:
        """The config whose point is always one of the trials."""
        if self.recipe is not None:
            return self.recipe(scale, flavour)
        return stage_record("pretrain").resolve(self.preset_name(scale, flavour), [], None)

    def preset_name(self, scale: str, flavour: str) -> str:
        """The preset of this entry's trials at `scale` in `flavour` (DINO has only the official one)."""
        return _flavoured(self.preset.format(scale=scale), flavour)

    def tuned_preset_name(self, scale: str, flavour: str) -> str:
        """The preset that takes this entry's chosen point at `scale` (TUNED_POINTS in the method's file)."""
        return _flavoured((self.tuned_preset or self.preset).format(scale=scale), flavour)

    def space(self) -> dict[str, tuple]:
        return method_named(self.method).tuning_space


def _flavoured(name: str, flavour: str) -> str:
    return name if name in stage_record("pretrain").presets else baseline_preset(name, flavour)


# MoCo v3 is PatchMix with one image per mixed image: PatchMix's space, tuned apart. Its trials start from
# Table 6's m = 1 preset (PatchMix's point with m = 1; every trial sets both tuned keys, so where they start
# changes nothing), and its chosen point becomes the MoCo v3 preset of Table 3 and Figure 4.
TUNED_METHODS = {
    "patchmix": TunedMethod("PatchMix", "patchmix", "fashion_mnist_{scale}_m2", "fashion_mnist_{scale}_m2",
                            lambda scale, flavour: patchmix.fashion_mnist(scale, flavour, tuned=False)),
    "mocov3": TunedMethod("MoCo v3 (m=1)", "patchmix", "fashion_mnist_{scale}_m1", "fashion_mnist_{scale}_mocov3",
                          lambda scale, flavour: patchmix.mocov3_fashion_mnist(scale, flavour, tuned=False)),
    "dino": TunedMethod("DINO", "dino", "fashion_mnist_{scale}_dino", "fashion_mnist_{scale}_dino",
                        lambda scale, flavour: dino.dino_fashion_mnist(scale, tuned=False)),
    "sdmp": TunedMethod("SDMP", "sdmp", "fashion_mnist_{scale}_sdmp", "fashion_mnist_{scale}_sdmp",
                        lambda scale, flavour: sdmp.sdmp_fashion_mnist(scale, flavour, tuned=False)),
}


@dataclass(frozen=True)
class TrialSchedule:
    """What every trial of a tuning shares: its schedule and its split of the training images."""

    epochs: int
    training_images: int  # what the trial pretrains on (0: every training image but the validation ones)
    validation_images: int

    @property
    def warmup_epochs(self) -> int:
        return max(1, self.epochs // 8)  # the scale's rule (CIFAR: 100 of 800 epochs)

    def overrides(self) -> tuple[str, ...]:
        """The validation images are drawn from the first training_images + validation_images, so a trial
        trains on as many images as the preset it starts from."""
        subset = self.training_images + self.validation_images if self.training_images else 0
        return (f"data.train_subset={subset}", f"data.validation_size={self.validation_images}",
                f"optim.epochs={self.epochs}", f"optim.warmup_epochs={self.warmup_epochs}")


def schedule_for(dataset: str) -> TrialSchedule:
    """The trials' schedule at a Fashion-MNIST scale: TRIAL_EPOCH_FRACTION of its epochs, its training
    images, VALIDATION_IMAGES held out."""
    scaled = FASHION_MNIST_SCALES[SCALES[dataset]]
    return TrialSchedule(max(1, round(scaled["epochs"] * TRIAL_EPOCH_FRACTION)), scaled["train_subset"],
                         VALIDATION_IMAGES)


def value_text(value: object) -> str:
    """A candidate value as an override writes it (and as the trial's stage key and tuning.csv show it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def balanced_sample(space: dict[str, tuple], count: int, seed: int = SAMPLE_SEED,
                    include: dict[str, str] | None = None) -> list[dict[str, str]]:
    """`count` distinct points of the grid `space` ({key: candidate values}), as {key: value text}, in the
    grid's order. Seeded; each key's values are dealt out in turn, so every candidate value is tried
    equally often (give or take one) and no part of a large grid is left out by chance, as a plain
    random draw of a few points could. `include` (a point of the grid, as value texts) is always one of
    them. The same space, seed and `include` give the same points."""
    texts = {key: tuple(value_text(value) for value in values) for key, values in space.items()}
    grid = list(itertools.product(*texts.values()))
    if count > len(grid):
        raise ValueError(f"a grid of {len(grid)} points cannot give {count} distinct trials: declare more "
                         f"candidate values in the method's tuning_space ({', '.join(space)})")
    wanted = tuple(include[key] for key in texts) if include else None
    if wanted is not None and wanted not in grid:
        raise ValueError(f"{point_label(include)} is not a point of the grid {texts}")
    generator = random.Random(seed)
    for _ in range(10_000):  # dealt again while a point repeats or the included one is missing
        columns = []
        for values in texts.values():
            order = list(values)
            generator.shuffle(order)  # which values get the extra trial when count is no multiple
            column = [order[index % len(order)] for index in range(count)]
            generator.shuffle(column)
            columns.append(column)
        points = list(zip(*columns))
        if len(set(points)) == count and (wanted is None or wanted in points):
            break
    else:  # a grid asked for nearly all its points: the included one and a seeded draw of the others
        others = [point for point in grid if point != wanted]
        points = ([wanted] if wanted else []) + generator.sample(others, count - (wanted is not None))
    position = {point: index for index, point in enumerate(grid)}
    return [dict(zip(texts, point)) for point in sorted(points, key=position.__getitem__)]


def config_point(config: PretrainConfig, space: dict[str, tuple]) -> dict[str, str] | None:
    """The values of `config` at the keys of `space` (as value texts) when they are a point of the grid,
    else None."""
    point = {}
    for key, values in space.items():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        if value_text(value) not in {value_text(candidate) for candidate in values}:
            return None
        point[key] = value_text(value)
    return point


def point_label(point: dict[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in point.items())


@dataclass(frozen=True)
class Trial:
    """One trial: a point of one method's grid, at one seed, and what its stages run."""

    dataset: str  # the plan's dataset token
    method: str  # key of TUNED_METHODS (or of the entries a test tunes)
    point: tuple[tuple[str, str], ...]  # ((key, value text), ...), the method's keys in declared order
    seed: int
    preset: str
    overrides: tuple[str, ...]  # of the pretraining: the point's, the schedule's and split's, the seed
    epochs: int

    @property
    def label(self) -> str:
        return point_label(dict(self.point))

    @property
    def prefix(self) -> str:
        return f"tune/{self.dataset}/{self.method}/{self.label}/seed{self.seed}"

    @property
    def pretrain_key(self) -> str:
        return f"{self.prefix}/pretrain"

    @property
    def knn_key(self) -> str:
        return f"{self.prefix}/knn"

    @property
    def row_method(self) -> str:
        """The report row of its point (one row per point, averaged over its seeds)."""
        return f"{self.method}: {self.label}"


def tuning_trials(dataset: str, flavour: str = "official", seeds: tuple[int, ...] = (0,),
                  methods: dict[str, TunedMethod] | None = None, trials_per_method: int = TRIALS_PER_METHOD,
                  schedule: TrialSchedule | None = None) -> list[Trial]:
    """Every trial of the tuning at `dataset` (a Fashion-MNIST scale unless `methods` and `schedule` are
    given, as tests do): per method, its `trials_per_method` points, each at every seed."""
    methods = TUNED_METHODS if methods is None else methods
    schedule = schedule or schedule_for(dataset)
    scale = SCALES.get(dataset, "")
    trials = []
    for name, entry in methods.items():
        preset, space = entry.preset_name(scale, flavour), entry.space()
        # The scaled published recipe's point is always a trial (where it is a point of the grid): the
        # tuning either confirms it or finds a point better on the validation images. The recipe, not the
        # preset, which takes the chosen point: the same trials again once the choice is set.
        start = config_point(entry.start(scale, flavour), space)
        for point in balanced_sample(space, trials_per_method, include=start):
            for seed in seeds:
                overrides = (*(f"{key}={value}" for key, value in point.items()), *schedule.overrides(),
                             f"run.seed={seed}")
                trials.append(Trial(dataset, name, tuple(point.items()), seed, preset, overrides, schedule.epochs))
    return trials
