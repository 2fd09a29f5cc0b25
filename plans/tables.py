"""Experiment plans: which runs make each table and figure. Used by the launcher and the reports.

Data over the stage records (plans/registry.py): a plan is a list of stages, each naming a stage
record, a preset, its overrides, the stage it reads, its resources and the report row it fills. Stage keys are stable
names ("table6/cifar100/m2/seed0/linear") recorded as `run.experiment` in every result.json, which
is how the reports find the results of a plan without importing anything from the stages.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from common.config import config_hash
from plans.registry import baseline_preset, stage_record
from plans.tuning import TRIALS_PER_METHOD, TUNED_METHODS, VALIDATION_KNN, Trial, schedule_for, tuning_trials
from pretrain.configs import FASHION_MNIST_SCALES, preset

PRETRAIN = "pretrain"
PROTOCOLS = ("knn", "linear", "finetune")
NAME_FIELDS = ("run.name", "preset")  # what a preset's name sets: not part of what it trains


@dataclass(frozen=True)
class Row:
    """Where a result goes in a report; matches reports/reference/paper_tables.csv columns."""

    table: str
    method: str
    backbone: str
    epochs: int
    dataset: str  # imagenet1k | cifar10 | cifar100 | coco | fashion_mnist
    protocol: str  # knn | linear | finetune | ap_box | ap_mask | similarity


@dataclass(frozen=True)
class Stage:
    key: str
    kind: str  # pretrain | knn | linear | finetune | transfer | similarity
    preset: str  # the pretraining preset, or the protocol's preset
    overrides: tuple[str, ...] = ()
    after: str = ""  # key of the pretraining stage an evaluation reads
    nodes: int = 1
    gpus_per_node: int = 1
    hours: float = 4.0  # per job; preempted / timed-out jobs requeue and resume
    rows: tuple[Row, ...] = ()  # the report rows its result fills (a detection run fills box and mask AP)
    seed: int = 0


@dataclass(frozen=True)
class Claim:
    """A claim the paper makes in a table: row `better` beats row `worse` (report methods), checked
    per dataset and protocol on the paired difference over seeds (reports/statistics.py)."""

    text: str
    better: str
    worse: str
    protocols: tuple[str, ...] = ()  # the protocols it is about; (): every protocol of the table


@dataclass
class Plan:
    name: str
    description: str
    stages: list[Stage] = field(default_factory=list)
    baseline: str = ""  # the method every other row is compared with (paired over seeds) in reports
    claims: tuple[Claim, ...] = ()

    def stage(self, key: str) -> Stage:
        return next(s for s in self.stages if s.key == key)

    def reported(self) -> list[Stage]:
        return [s for s in self.stages if s.rows]


BACKBONE = {"vit_t2": "ViT-T/2", "vit_s2": "ViT-S/2", "vit_b2": "ViT-B/2", "vit_s16": "ViT-S/16", "vit_b16": "ViT-B/16"}
DATASET_LABEL = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet": "imagenet1k",
                 "fashion_mnist": "fashion_mnist", "fashion_mnist_gpu": "fashion_mnist"}
# GPUs and hours per pretraining job (requeued until done); evaluation jobs are lighter.
IMAGENET_RESOURCES = {"nodes": 2, "gpus_per_node": 8, "hours": 48.0}
CIFAR_RESOURCES = {"nodes": 1, "gpus_per_node": 4, "hours": 24.0}


def _pretrain_with_evals(plan: Plan, prefix: str, preset: str, seed: int, protocols: tuple[str, ...],
                         row_of: dict[str, Row], resources: dict, overrides: tuple[str, ...] = (),
                         eval_presets: dict[str, str] | None = None) -> None:
    """One pretraining stage and its evaluation stages."""
    eval_presets = eval_presets or {}
    pretrain_key = f"{prefix}/seed{seed}/pretrain"
    plan.stages.append(Stage(pretrain_key, PRETRAIN, preset, (*overrides, f"run.seed={seed}"), seed=seed,
                             **resources))
    for protocol in protocols:
        plan.stages.append(Stage(f"{prefix}/seed{seed}/{protocol}", protocol,
                                 eval_presets.get(protocol, stage_record(protocol).presets[0]),
                                 after=pretrain_key, rows=(row_of[protocol],) if protocol in row_of else (),
                                 seed=seed, **_evaluation_resources(protocol, resources)))


def _evaluation_resources(protocol: str, resources: dict) -> dict:
    """An evaluation job of `protocol` after a pretraining on `resources`: one node of its GPUs, the
    protocol's own job length."""
    return {"nodes": 1, "gpus_per_node": resources["gpus_per_node"], "hours": stage_record(protocol).hours}


def _rows(table: str, method: str, backbone: str, epochs: int, dataset: str,
          protocols: tuple[str, ...]) -> dict[str, Row]:
    return {p: Row(table, method, backbone, epochs, DATASET_LABEL.get(dataset, dataset), p) for p in protocols}


# The baselines the suite runs itself (pretrain/methods/): report label per method and setting. On
# ImageNet DINO runs multi-crop as published, the paper's "DINO*" rows; on CIFAR two crops, its "DINO" rows.
RANDOM_INIT = "random init (no pretraining)"  # the row of an encoder evaluated at its initialisation
BASELINE_LABELS = {"imagenet": {"dino": "DINO*", "sdmp": "SDMP"}, "cifar": {"dino": "DINO", "sdmp": "SDMP"}}


def table2(flavour: str = "official", seeds: tuple[int, ...] = (0,), **_) -> Plan:
    plan = Plan("table2", "ImageNet-1K: ViT-S/16 300 and 800 epochs, ViT-B/16 300 epochs; finetune, linear, kNN; "
                "DINO (ViT-S/16, ViT-B/16) and SDMP (ViT-S/16) 300 epochs run here as published")
    for seed in seeds:
        for arch, epochs in (("vit_s16", 300), ("vit_s16", 800), ("vit_b16", 300)):
            _pretrain_with_evals(plan, f"table2/{arch}/{epochs}ep", f"imagenet_{arch}_{epochs}ep_{flavour}", seed,
                                 PROTOCOLS, _rows("table2", "PatchMix", BACKBONE[arch], epochs, "imagenet", PROTOCOLS),
                                 IMAGENET_RESOURCES)
        for method, arch in (("dino", "vit_s16"), ("dino", "vit_b16"), ("sdmp", "vit_s16")):
            _pretrain_with_evals(plan, f"table2/{method}/{arch}/300ep", baseline_preset(f"imagenet_{method}_{arch}_300ep",
                                                                                         flavour), seed, PROTOCOLS,
                                 _rows("table2", BASELINE_LABELS["imagenet"][method], BACKBONE[arch], 300, "imagenet",
                                       PROTOCOLS), IMAGENET_RESOURCES)
    return plan


# The methods Table 3 and Figure 4 compare (keys of plans.tuning.TUNED_METHODS), with their rows' names.
COMPARED_METHODS = {"patchmix": "PatchMix", "mocov3": "MoCo v3 (m=1)", "dino": "DINO", "sdmp": "SDMP"}


def tuned_preset(dataset: str, method: str, flavour: str) -> str:
    """The preset of `method` (a key of plans.tuning.TUNED_METHODS) in Table 3 and Figure 4 at a
    Fashion-MNIST scale: the one that takes the point its tuning chose, named as Table 6's row of the same
    configuration where there is one (MoCo v3's tuned point may be PatchMix's with m = 1), so they share a run."""
    base = ABLATION_BASES[dataset].preset
    return table6_preset_if_same(base, TUNED_METHODS[method].tuned_preset_name(base.removeprefix("fashion_mnist_"),
                                                                               flavour), flavour)


# The Fashion-MNIST scale of Table 3: the rows the suite runs there (each method at the point `make tune`
# chose for it: plans/tuning.py; PatchMix's is Table 6's m = 2 run), and the paper's claims against each baseline.
TABLE3_CLAIMS = tuple(Claim(f"PatchMix beats {other}", "PatchMix", other) for other in ("DINO", "SDMP", "MoCo v3 (m=1)"))


def table3(flavour: str = "official", seeds: tuple[int, ...] = (0,), datasets: tuple[str, ...] = ("cifar10", "cifar100"),
           **_) -> Plan:
    plan = Plan("table3", "CIFAR-10/100: ViT-T/2, ViT-S/2 (800, 1600 epochs), ViT-B/2 (800); finetune, linear, kNN; "
                "DINO and SDMP (ViT-T/2, ViT-S/2, ViT-B/2, 800 epochs) run here as published",
                baseline="PatchMix", claims=TABLE3_CLAIMS)
    for seed in seeds:
        for dataset in datasets:
            if dataset in FASHION_MNIST:
                _fashion_mnist_table3(plan, dataset, flavour, seed)
                continue
            for arch, epochs in (("vit_t2", 800), ("vit_t2", 1600), ("vit_s2", 800), ("vit_s2", 1600), ("vit_b2", 800)):
                _pretrain_with_evals(plan, f"table3/{dataset}/{arch}/{epochs}ep", f"{dataset}_{arch}_{epochs}ep_{flavour}",
                                     seed, PROTOCOLS,
                                     _rows("table3", "PatchMix", BACKBONE[arch], epochs, dataset, PROTOCOLS),
                                     CIFAR_RESOURCES)
            for method in ("dino", "sdmp"):
                for arch in ("vit_t2", "vit_s2", "vit_b2"):
                    _pretrain_with_evals(plan, f"table3/{dataset}/{method}/{arch}/800ep",
                                         baseline_preset(f"{dataset}_{method}_{arch}_800ep", flavour), seed, PROTOCOLS,
                                         _rows("table3", BASELINE_LABELS["cifar"][method], BACKBONE[arch], 800, dataset,
                                               PROTOCOLS), CIFAR_RESOURCES)
    return plan


def _fashion_mnist_table3(plan: Plan, dataset: str, flavour: str, seed: int) -> None:
    """Table 3 at a Fashion-MNIST scale: PatchMix (m = 2), MoCo v3 (m = 1), DINO and SDMP, each with the
    same data, budget, seeds and evaluations (linear probe and kNN), and both evaluations of the weights
    each method's run starts from, the reference of what its pretraining added on each protocol (a
    method whose interval over it is not above 0 did not learn there: its claims are not compared,
    reports/tables.py)."""
    base, protocols = ABLATION_BASES[dataset], ("linear", "knn")
    for key, label in COMPARED_METHODS.items():
        _pretrain_with_evals(plan, f"table3/{dataset}/{key}", tuned_preset(dataset, key, flavour), seed, protocols,
                             _rows("table3", label, base.backbone, base.epochs, dataset, protocols),
                             base.resources, eval_presets=base.eval_presets)
        _random_initialisation(plan, f"table3/{dataset}/{key}", seed, protocols, base.backbone, dataset,
                               base.resources, base.eval_presets, label)


def _random_initialisation(plan: Plan, prefix: str, seed: int, protocols: tuple[str, ...], backbone: str,
                           dataset: str, resources: dict, eval_presets: dict[str, str], method: str = "") -> None:
    """What pretraining adds: `protocols` on the weights the pretraining stage `<prefix>/seed<seed>/pretrain`
    starts from (its architecture, initialisation scheme and seed: source.encoder=random), as the row
    `random_init_label(method)`. A method whose interval over it is not above 0 did not learn, and its
    claims are not compared (reports/tables.py)."""
    for protocol in protocols:
        plan.stages.append(Stage(f"{prefix}-random-init/seed{seed}/{protocol}", protocol,
                                 eval_presets.get(protocol, stage_record(protocol).presets[0]),
                                 ("source.encoder=random",), after=f"{prefix}/seed{seed}/pretrain", seed=seed,
                                 **_evaluation_resources(protocol, resources),
                                 rows=(Row(plan.name, random_init_label(method), backbone, 0,
                                           DATASET_LABEL.get(dataset, dataset), protocol),)))


def random_init_label(method: str = "") -> str:
    """The row of an encoder evaluated at its initialisation, before any training: `method`'s own (the
    weights its runs start from: methods initialise differently, DINO's ViT as DINO does), or, without a
    method, the one initialisation all of a table's runs share."""
    return f"{method}: {RANDOM_INIT}" if method else RANDOM_INIT


def is_random_init(method: str) -> bool:
    """Whether a row named `method` is a random initialisation (random_init_label)."""
    return method == RANDOM_INIT or method.endswith(f": {RANDOM_INIT}")


TABLE4_PROTOCOLS = {  # transfer config -> the method name of its rows
    # The protocol of the paper's Table 4 rows (MoCo v3, MAE, CAE, ...: Mask R-CNN with a ViT-FPN, as
    # in the MAE paper): our comparable row.
    "vit_fpn_100ep": "PatchMix",
    # detectron2's ViTDet recipe gives the same weights about 1.3 AP more: reported on its own row,
    # compared with no paper number.
    "vitdet_100ep": "PatchMix (ViTDet recipe)",
}


def table4(flavour: str = "official", seeds: tuple[int, ...] = (0,), **_) -> Plan:
    plan = Plan("table4", "COCO Mask R-CNN with a ViT-B/16 backbone pretrained 300 epochs on ImageNet-1K. "
                "The paper's rows use Mask R-CNN with a ViT-FPN (the MAE paper's protocol): our `PatchMix` row "
                "runs that protocol (transfer config vit_fpn_100ep); `PatchMix (ViTDet recipe)` runs detectron2's "
                "ViTDet recipe (vitdet_100ep) on the same weights, which is not the paper's protocol and has no "
                "paper number")
    for seed in seeds:
        pretrain_key = f"table4/vit_b16/seed{seed}/pretrain"
        plan.stages.append(Stage(pretrain_key, PRETRAIN, f"imagenet_vit_b16_300ep_{flavour}", (f"run.seed={seed}",),
                                 seed=seed, **IMAGENET_RESOURCES))
        for config, method in TABLE4_PROTOCOLS.items():
            plan.stages.append(Stage(f"table4/vit_b16/seed{seed}/transfer-{config}", "transfer", config,
                                     (f"run.seed={seed}",), after=pretrain_key, nodes=8, gpus_per_node=8, hours=48.0,
                                     seed=seed, rows=tuple(Row("table4", method, "ViT-B/16", 300, "coco", metric)
                                                           for metric in ("ap_box", "ap_mask"))))
    return plan


@dataclass(frozen=True)
class AblationBase:
    """Where the rows of Tables 5-7 (and Figure 4's Fashion-MNIST runs) come from, per dataset token."""

    preset: str  # presets are `<preset>_<row suffix>_<flavour>` (pretrain/configs.py)
    backbone: str
    epochs: int
    resources: dict
    eval_presets: dict


CPU_STUDY_RESOURCES = {"nodes": 1, "gpus_per_node": 0, "hours": 2.0}
ABLATION_BASES = {
    "cifar10": AblationBase("cifar10_vit_s2_800ep", "ViT-S/2", 800, CIFAR_RESOURCES, {}),
    "cifar100": AblationBase("cifar100_vit_s2_800ep", "ViT-S/2", 800, CIFAR_RESOURCES, {}),
    # Fashion-MNIST scale-downs of the CIFAR family (pretrain/configs.fashion_mnist): `fashion_mnist`
    # is the cpu scale (make study on 2 cores), `fashion_mnist_gpu` the gpu scale.
    "fashion_mnist": AblationBase("fashion_mnist_cpu", "ViT-debug/4", FASHION_MNIST_SCALES["cpu"]["epochs"],
                                  CPU_STUDY_RESOURCES, {"linear": "fast"}),
    "fashion_mnist_gpu": AblationBase("fashion_mnist_gpu", "ViT-mini/4", FASHION_MNIST_SCALES["gpu"]["epochs"],
                                      {"nodes": 1, "gpus_per_node": 1, "hours": 2.0}, {}),
}
FASHION_MNIST = ("fashion_mnist", "fashion_mnist_gpu")


MIXED_IMAGE_ROWS = (1, 2, 3, 4)  # Table 6's rows: presets `<base>_m<m>_<flavour>`


@functools.cache  # a plan asks once per row, seed and dataset; presets are fixed
def shared_row_preset(base: str, suffix: str, flavour: str) -> str:
    """The preset a row of Tables 5-7 trains: `<base>_<suffix>_<flavour>`, or Table 6's preset of the
    same configuration under another name. Table 5's PatchMix row and Table 7's row with all three
    loss terms are the default PatchMix of the flavour (m = 2 official, m = 3 paper): named as Table 6's
    row, they share its run (and Table 3's and Figure 4's on Fashion-MNIST) instead of training it again."""
    return table6_preset_if_same(base, f"{base}_{suffix + '_' if suffix else ''}{flavour}", flavour)


def table6_preset_if_same(base: str, name: str, flavour: str) -> str:
    """Table 6's preset (`<base>_m<count>_<flavour>`) whose configuration is `name`'s, else `name`."""
    presets = stage_record(PRETRAIN).presets
    identity = config_hash(preset(name), NAME_FIELDS)
    for count in MIXED_IMAGE_ROWS:
        candidate = f"{base}_m{count}_{flavour}"
        if candidate in presets and config_hash(preset(candidate), NAME_FIELDS) == identity:
            return candidate
    return name


def _cifar_ablation(name: str, description: str, rows: dict[str, tuple[str, str]], flavour: str,
                    seeds: tuple[int, ...], datasets: tuple[str, ...], baseline: str,
                    claims: tuple[Claim, ...]) -> Plan:
    """Tables 5-7: ViT-S/2 on CIFAR (or its Fashion-MNIST scale-downs), linear and kNN, one
    pretraining run per row. rows: {key: (method as in the paper's table, preset suffix before the flavour)}."""
    plan = Plan(name, description, baseline=baseline, claims=claims)
    protocols = ("linear", "knn")
    for seed in seeds:
        for dataset in datasets:
            base = ABLATION_BASES[dataset]
            for key, (method, suffix) in rows.items():
                preset_name = shared_row_preset(base.preset, suffix, flavour)
                _pretrain_with_evals(plan, f"{name}/{dataset}/{key}", preset_name, seed, protocols,
                                     _rows(name, method, base.backbone, base.epochs, dataset, protocols),
                                     base.resources, eval_presets=base.eval_presets)
            if dataset in FASHION_MNIST:  # at a scale-down, whether each row learned is shown, not assumed
                # Every row of these tables is PatchMix's ViT with one initialisation: the first row's stands for all.
                _random_initialisation(plan, f"{name}/{dataset}/{next(iter(rows))}", seed, protocols, base.backbone,
                                       dataset, base.resources, base.eval_presets)
    return plan


def table5(flavour: str = "official", seeds: tuple[int, ...] = (0,), datasets: tuple[str, ...] = ("cifar10", "cifar100"),
           **_) -> Plan:
    """Mix strategies in one contrastive framework (same loss): Baseline (m = 1), CutMix+Mixup,
    RegionSwap, ResizeMix (pretrain/mixers.py) and PatchMix."""
    rows = {"baseline": ("Baseline", "m1"), "cutmix_mixup": ("CutMix+Mixup", "mix-cutmix_mixup"),
            "regionswap": ("RegionSwap", "mix-regionswap"), "resizemix": ("ResizeMix", "mix-resizemix"),
            "patchmix": ("PatchMix", "")}
    claims = tuple(Claim(f"PatchMix beats {other}", "PatchMix", other)
                   for other in ("Baseline", "CutMix+Mixup", "RegionSwap", "ResizeMix"))
    return _cifar_ablation("table5", "Mix strategies with ViT-S/2 on CIFAR, 800 epochs: linear and kNN", rows,
                           flavour, seeds, datasets, "Baseline", claims)


def table6(flavour: str = "official", seeds: tuple[int, ...] = (0,), datasets: tuple[str, ...] = ("cifar10", "cifar100"),
           **_) -> Plan:
    rows = {f"m{m}": (f"PatchMix m={m}", f"m{m}") for m in MIXED_IMAGE_ROWS}
    claims = (Claim("m = 2 beats m = 1 (MoCo v3)", "PatchMix m=2", "PatchMix m=1"),
              Claim("m = 3 beats m = 1 (MoCo v3)", "PatchMix m=3", "PatchMix m=1"),
              Claim("m = 3 beats m = 2", "PatchMix m=3", "PatchMix m=2"),
              Claim("m = 3 beats m = 4", "PatchMix m=3", "PatchMix m=4"))
    return _cifar_ablation("table6", "Number of mixed images m = 1..4 (m = 1 is MoCo v3), ViT-S/2 on CIFAR, 800 epochs",
                           rows, flavour, seeds, datasets, "PatchMix m=1", claims)


def table7(flavour: str = "official", seeds: tuple[int, ...] = (0,), datasets: tuple[str, ...] = ("cifar10", "cifar100"),
           **_) -> Plan:
    rows = {subset: (f"PatchMix {subset}", f"loss-{subset}") for subset in ("o2o", "m2o", "m2m", "o2o+m2o", "o2o+m2o+m2m")}
    claims = (Claim("adding m2o to o2o helps", "PatchMix o2o+m2o", "PatchMix o2o"),
              Claim("adding m2m to o2o+m2o helps", "PatchMix o2o+m2o+m2m", "PatchMix o2o+m2o"),
              Claim("o2o alone beats m2o alone", "PatchMix o2o", "PatchMix m2o"),
              Claim("o2o alone beats m2m alone", "PatchMix o2o", "PatchMix m2m"))
    return _cifar_ablation("table7", "Loss terms (o2o, m2o, m2m and combinations), ViT-S/2 on CIFAR, 800 epochs",
                           rows, flavour, seeds, datasets, "PatchMix o2o", claims)


FIG5_EPOCHS = (100, 200, 400, 800, 1600)


def fig5(flavour: str = "official", seeds: tuple[int, ...] = (0,), datasets: tuple[str, ...] = ("cifar10", "cifar100"),
         **_) -> Plan:
    """Accuracy against pretraining epochs (ViT-T/2, ViT-S/2); warmup scaled as 100 of 800 epochs."""
    plan = Plan("fig5", "Pretraining epochs 100-1600, ViT-T/2 and ViT-S/2 on CIFAR: finetune, linear, kNN")
    for seed in seeds:
        for dataset in datasets:
            for arch in ("vit_t2", "vit_s2"):
                for epochs in FIG5_EPOCHS:
                    _pretrain_with_evals(
                        plan, f"fig5/{dataset}/{arch}/{epochs}ep", f"{dataset}_{arch}_800ep_{flavour}", seed, PROTOCOLS,
                        _rows("fig5", "PatchMix", BACKBONE[arch], epochs, dataset, PROTOCOLS), CIFAR_RESOURCES,
                        overrides=(f"optim.epochs={epochs}", f"optim.warmup_epochs={max(epochs // 8, 1)}"))
    return plan


def fig4(flavour: str = "official", seeds: tuple[int, ...] = (0,), datasets: tuple[str, ...] = ("imagenet",),
         **_) -> Plan:
    """Similarity distribution of ViT-S/16 pretrained 300 epochs on ImageNet (or of the Fashion-MNIST
    scale-downs' runs, shared with Tables 3 and 6): PatchMix against MoCo v3 (m = 1), DINO and SDMP,
    all run here. A similarity says nothing of whether a method learned (a collapsed encoder's is 1), so
    each run also gets a kNN evaluation, and so does the initialisation it started from: a method whose
    kNN is not above its initialisation's did not learn, and its similarity is not compared
    (reports/tables.py `learned`). On Fashion-MNIST these are Table 3's kNN stages, shared."""
    plan = Plan("fig4", "Inter-instance similarity distribution, ViT-S/16 300 epochs on ImageNet-1K: PatchMix, "
                "MoCo v3, DINO and SDMP", baseline="MoCo v3 (m=1)",
                claims=tuple(Claim(f"PatchMix gives related classes more similarity than {other}", "PatchMix", other,
                                   protocols=("similarity",)) for other in ("MoCo v3 (m=1)", "DINO", "SDMP")))
    for seed in seeds:
        for dataset in datasets:
            for name, label in COMPARED_METHODS.items():
                if dataset == "imagenet":
                    preset = (f"imagenet_vit_s16_300ep_{flavour}" if name in ("patchmix", "mocov3")
                              else baseline_preset(f"imagenet_{name}_vit_s16_300ep", flavour))
                    _pretrain_with_evals(plan, f"fig4/{name}", preset, seed, FIG4_PROTOCOLS,
                                         _rows("fig4", label, "ViT-S/16", 300, dataset, FIG4_PROTOCOLS),
                                         IMAGENET_RESOURCES, overrides=("mix.num_mixed=1",) if name == "mocov3" else ())
                    _random_initialisation(plan, f"fig4/{name}", seed, ("knn",), "ViT-S/16", dataset,
                                           IMAGENET_RESOURCES, {}, label)
                    continue
                base = ABLATION_BASES[dataset]
                _pretrain_with_evals(plan, f"fig4/{dataset}/{name}", tuned_preset(dataset, name, flavour), seed,
                                     FIG4_PROTOCOLS, _rows("fig4", label, base.backbone, base.epochs, dataset,
                                                           FIG4_PROTOCOLS), base.resources, eval_presets=base.eval_presets)
                _random_initialisation(plan, f"fig4/{dataset}/{name}", seed, ("knn",), base.backbone, dataset,
                                       base.resources, base.eval_presets, label)
    return plan


FIG4_PROTOCOLS = ("similarity", "knn")  # the figure's measure, and the kNN that tells whether a method learned


def demo(seeds: tuple[int, ...] = (0,), **_) -> Plan:
    """The CPU demo on Fashion-MNIST: m = 1 (MoCo v3), 2, 3; kNN and a linear probe on cached
    features; plus kNN of the randomly initialised encoder, to show what pretraining added."""
    plan = Plan("demo", "Fashion-MNIST, tiny ViT on CPU: PatchMix m = 1, 2, 3; kNN and linear probe",
                baseline="MoCo v3 (m=1)", claims=(Claim("m = 2 beats m = 1 (MoCo v3)", "PatchMix m=2", "MoCo v3 (m=1)"),
                                                  Claim("m = 3 beats m = 1 (MoCo v3)", "PatchMix m=3", "MoCo v3 (m=1)")))
    protocols = ("knn", "linear")
    resources = {"nodes": 1, "gpus_per_node": 0, "hours": 1.0}
    for seed in seeds:
        for m in (1, 2, 3):
            _pretrain_with_evals(plan, f"demo/m{m}", f"demo_fashion_mnist_m{m}", seed, protocols,
                                 _rows("demo", f"PatchMix m={m}" if m > 1 else "MoCo v3 (m=1)", "ViT-debug/4", 0,
                                       "fashion_mnist", protocols), resources, eval_presets={"linear": "fast"})
        plan.stages.append(Stage(f"demo/random-init/seed{seed}/knn", "knn", "default", ("source.encoder=random",),
                                 after=f"demo/m2/seed{seed}/pretrain", seed=seed, **resources,
                                 rows=(Row("demo", RANDOM_INIT, "ViT-debug/4", 0, "fashion_mnist",
                                           "knn"),)))
    return plan


def smoke(seeds: tuple[int, ...] = (0,), **_) -> Plan:
    """Seconds on a CPU, generated images: the whole graph (pretrain -> kNN + linear -> report)."""
    plan = Plan("smoke", "Generated images, debug ViT: pretraining, kNN and linear probe end to end")
    resources = {"nodes": 1, "gpus_per_node": 0, "hours": 0.5}
    for seed in seeds:
        _pretrain_with_evals(plan, "smoke/m2", "debug_cpu", seed, ("knn", "linear"),
                             _rows("smoke", "PatchMix m=2", "ViT-debug/4", 0, "synthetic", ("knn", "linear")),
                             resources, eval_presets={"linear": "fast"})
    return plan


def tuning_plan(trials: list[Trial], description: str, resources: dict, backbone: str) -> Plan:
    """The stages of a tuning's trials (plans/tuning.py): each trial's pretraining, then its kNN on the
    validation split, which fills the report row of its point. No stage reads the test set."""
    plan = Plan("tune", description)
    knn_resources = {"nodes": 1, "gpus_per_node": resources["gpus_per_node"], "hours": stage_record("knn").hours}
    for trial in trials:
        plan.stages.append(Stage(trial.pretrain_key, PRETRAIN, trial.preset, trial.overrides, seed=trial.seed,
                                 **resources))
        plan.stages.append(Stage(trial.knn_key, "knn", "default", VALIDATION_KNN, after=trial.pretrain_key,
                                 seed=trial.seed, rows=(Row("tune", trial.row_method, backbone, trial.epochs,
                                                            DATASET_LABEL.get(trial.dataset, trial.dataset), "knn"),),
                                 **knn_resources))
    return plan


def tune(flavour: str = "official", seeds: tuple[int, ...] = (0,), datasets: tuple[str, ...] = ("fashion_mnist",),
         **_) -> Plan:
    """One tuning procedure for every method at a Fashion-MNIST scale (plans/tuning.py): the same number of
    short trials for PatchMix, MoCo v3, DINO and SDMP, each ranked by kNN on images held out of the
    training set; the test set is never read."""
    stages, descriptions = [], []
    for dataset in datasets:
        base, schedule = ABLATION_BASES[dataset], schedule_for(dataset)
        trials = tuning_trials(dataset, flavour, seeds)
        stages += tuning_plan(trials, "", base.resources, base.backbone).stages
        descriptions.append(f"{dataset}: {TRIALS_PER_METHOD} trials per method ({', '.join(TUNED_METHODS)}) "
                            f"of {schedule.epochs} epochs, ranked by kNN on {schedule.validation_images:,} "
                            "training images held out (never the test set)")
    return Plan("tune", "Tuning, the same budget for every method: " + "; ".join(descriptions), stages)


PLANS = {"table2": table2, "table3": table3, "table4": table4, "table5": table5, "table6": table6,
         "table7": table7, "fig4": fig4, "fig5": fig5, "demo": demo, "smoke": smoke, "tune": tune}
ALIASES = {"ablation-mix-number": "table6", "ablation-loss": "table7"}
# The datasets each plan can run (the others have fixed datasets and ignore the option).
PLAN_DATASETS = {**{name: ("cifar10", "cifar100", *FASHION_MNIST) for name in ("table5", "table6", "table7")},
                 "fig4": ("imagenet", *FASHION_MNIST), "fig5": ("cifar10", "cifar100"),
                 "table3": ("cifar10", "cifar100", *FASHION_MNIST), "tune": FASHION_MNIST}


def build_plan(name: str, flavour: str = "official", seeds: tuple[int, ...] = (0,),
               datasets: tuple[str, ...] = ()) -> Plan:
    name = ALIASES.get(name, name)
    if name not in PLANS:
        raise ValueError(f"unknown plan {name!r}; choose one of {', '.join([*PLANS, *ALIASES])}")
    if flavour not in ("paper", "official"):
        raise ValueError(f"flavour must be paper or official, got {flavour!r}")
    keywords = {"flavour": flavour, "seeds": tuple(seeds)}
    if datasets and name in PLAN_DATASETS:
        unknown = set(datasets) - set(PLAN_DATASETS[name])
        if unknown:
            raise ValueError(f"datasets {sorted(unknown)} are not part of {name} ({', '.join(PLAN_DATASETS[name])})")
        keywords["datasets"] = tuple(datasets)
    plan = PLANS[name](**keywords)
    scales = [ABLATION_BASES[d] for d in datasets if d in FASHION_MNIST]
    # Say what ran, and which setting of the paper it stands in for (a tuning stands in for none).
    if scales and len(scales) == len(datasets) and name != "tune":
        base = scales[0]
        plan.description = (f"Fashion-MNIST scale-down ({base.backbone}, {base.epochs} epochs, 28 px); the paper's "
                            f"setting: {plan.description}")
    return plan
