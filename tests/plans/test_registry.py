"""Stage records: every plan runs through them, and a run made before a change is still found."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from common.config import apply_overrides
from common.encoder import ENCODER_RECORD, read_encoder_record
from plans.registry import STAGES, headline, stage_record
from plans.tables import COMPARED_METHODS, PLANS, build_plan
from pretrain.configs import preset, run_directory
from pretrain.methods import patchmix


@pytest.mark.parametrize("name", sorted(PLANS))
def test_every_plan_stage_has_a_record_with_its_preset(name):
    plan = build_plan(name)
    for stage in plan.stages:
        record = stage_record(stage.kind)
        assert stage.preset in record.presets, (stage.key, stage.preset)
        assert bool(stage.after) == bool(record.upstream)
        for row in stage.rows:
            assert headline(row.protocol)  # every reported row has a headline metric in some record


def test_records_carry_what_the_launcher_and_reports_need():
    assert {"pretrain", "knn", "linear", "finetune", "similarity", "transfer"} <= set(STAGES)
    assert headline("knn") == ("top1_k20", "top-1, k=20") and headline("ap_mask")[0] == "ap_mask"
    assert STAGES["pretrain"].encoder_record is not None and not STAGES["pretrain"].upstream


def test_run_directory_names_of_the_previous_version_are_kept():
    """Golden names of the demo's pretraining run directories: a result computed by an earlier
    version must still be found as complete (changed on purpose once, when the demo went from 8,192
    to 6,144 training images to finish in under 10 minutes)."""
    names = {m: run_directory(apply_overrides(preset(f"demo_fashion_mnist_m{m}"), ["run.seed=0"])).path.name
             for m in (1, 2, 3)}
    assert names == {1: "demo-m1-247bc14391", 2: "demo-m2-8f12fc0ce3", 3: "demo-m3-6108293257"}


@pytest.mark.slow
def test_a_run_without_encoder_record_is_read_from_its_config(pretrained_run, tmp_path):
    """Runs made before encoder.json existed: evaluations find the same encoder, data and directory."""
    from evaluate import knn
    from evaluate.protocols import resolve_eval_config

    legacy = tmp_path / "legacy"
    shutil.copytree(pretrained_run, legacy, ignore=shutil.ignore_patterns("eval", "feature_cache"))
    written = read_encoder_record(legacy)
    (legacy / ENCODER_RECORD).unlink()
    assert read_encoder_record(legacy) == {key: value for key, value in written.items() if key != "final"}
    first = knn.main(resolve_eval_config("knn", "", str(legacy), "", ["run.progress=false"]))
    (legacy / ENCODER_RECORD).write_text(json.dumps(written))
    again = knn.main(resolve_eval_config("knn", "", str(legacy), "", ["run.progress=false"]))
    assert again["run_dir"] == first["run_dir"] and again["metrics"] == first["metrics"]
    assert Path(first["run_dir"]).parent == legacy / "eval"
    assert first["source_digest"] == written["final"]["digest"]


def test_table4_runs_the_papers_vit_fpn_protocol_and_vitdet_as_its_own_row():
    from plans.tables import build_plan

    transfers = [stage for stage in build_plan("table4", seeds=(0,)).stages if stage.kind == "transfer"]
    assert {stage.preset: {row.method for row in stage.rows} for stage in transfers} == {
        "vit_fpn_100ep": {"PatchMix"}, "vitdet_100ep": {"PatchMix (ViTDet recipe)"}}


def test_fashion_mnist_study_plans_use_scaled_down_cifar_presets():
    """DATASET=fashion_mnist: the ablation rows are the CIFAR ViT-S/2 rows scaled down (same mixing and
    loss, smaller model, images and schedule); Figure 4 reuses Table 6's m = 2 and m = 1 runs and Table 3's
    DINO and SDMP runs."""
    from pretrain.configs import PRESETS, preset
    from plans.tables import build_plan

    for name in ("table3", "table5", "table6", "table7", "fig4"):
        for dataset in ("fashion_mnist", "fashion_mnist_gpu"):
            plan = build_plan(name, seeds=(0, 1), datasets=(dataset,))
            assert all(stage.preset in PRESETS for stage in plan.stages if stage.kind == "pretrain"), name
            assert {row.dataset for stage in plan.reported() for row in stage.rows} == {"fashion_mnist"}
    from plans.tables import tuned_preset

    fig4 = {s.preset for s in build_plan("fig4", datasets=("fashion_mnist",)).stages if s.kind == "pretrain"}
    assert fig4 == {tuned_preset("fashion_mnist", method, "official") for method in ("patchmix", "mocov3", "dino", "sdmp")}
    assert {"fashion_mnist_cpu_m2_official", "fashion_mnist_cpu_dino_official", "fashion_mnist_cpu_sdmp_official"} < fig4
    table3 = {s.preset for s in build_plan("table3", datasets=("fashion_mnist",)).stages if s.kind == "pretrain"}
    assert table3 == fig4  # the same runs: shared, not repeated
    for row in ("m3", "mix-resizemix", "loss-o2o+m2o"):
        cifar, fashion = preset(f"cifar10_vit_s2_800ep_{row}_official"), preset(f"fashion_mnist_cpu_{row}_official")
        # the loss at PatchMix's tuned temperature (plans/tuning.py), every other field the CIFAR row's
        assert fashion.mix == cifar.mix and fashion.loss == dataclasses.replace(
            cifar.loss, temperature=patchmix.TUNED_POINTS["cpu"]["loss.temperature"])
        assert fashion.augment == cifar.augment
        assert (fashion.data.dataset, fashion.model.patch_size, fashion.model.image_size) == ("fashion_mnist", 4, 28)
        assert (fashion.run.device, fashion.run.precision, fashion.model.compile) == ("cpu", "fp32", False)
    assert preset("fashion_mnist_gpu_official").run.precision == "fp16"  # the official flavour's, on a GPU
    # The cpu scale chosen by the probes of STUDY.md: 20 epochs of batch 32 at lr 1e-2, one intra-op thread; the
    # baselines' learning rates scaled by PatchMix's factor (5e-4 -> 1e-2: x 20).
    from pretrain.methods.patchmix import fashion_mnist

    cpu = fashion_mnist("cpu", "official", tuned=False)  # the scaled recipe, before `make tune` set its point
    assert (cpu.optim.epochs, cpu.optim.warmup_epochs, cpu.optim.batch_size, cpu.optim.base_lr,
            cpu.run.cpu_threads) == (20, 2, 32, 1e-2, 1)
    from plans.tables import ABLATION_BASES
    for token, scale in (("fashion_mnist", "cpu"), ("fashion_mnist_gpu", "gpu")):  # the reports' Epochs column
        assert ABLATION_BASES[token].epochs == preset(f"fashion_mnist_{scale}_official").optim.epochs
    # A plan run at a Fashion-MNIST scale says so before the paper's setting (the reports' title).
    for name in ("table3", "table6", "fig4"):
        scaled, paper = build_plan(name, datasets=("fashion_mnist",)), build_plan(name)
        assert scaled.description == ("Fashion-MNIST scale-down (ViT-debug/4, 20 epochs, 28 px); the paper's setting: "
                                      + paper.description)
    from pretrain.methods.dino import dino_fashion_mnist
    from pretrain.methods.sdmp import sdmp_fashion_mnist

    assert dino_fashion_mnist("cpu", tuned=False).optim.base_lr == 1e-2  # DINO's 5e-4 x 20
    assert sdmp_fashion_mnist("cpu", "official", tuned=False).optim.base_lr == 3e-3  # SDMP's 1.5e-4 x 20
    assert preset("fashion_mnist_gpu_sdmp_official").optim.base_lr == 9e-4  # x 6 at the gpu scale
    with pytest.raises(ValueError, match="not part of table6"):
        build_plan("table6", datasets=("imagenet",))


def test_rows_training_the_same_configuration_share_one_run():
    """Table 5's PatchMix row and Table 7's row with all three loss terms are the flavour's default
    PatchMix, Table 6's m = 2 (official) or m = 3 (paper) row: one run per seed serves every table that
    reads it (the Fashion-MNIST study would otherwise train it three times)."""
    from slurm.graph import resolve_plan

    def pretraining_runs(name: str, flavour: str, dataset: str) -> dict[str, Path]:
        plan = build_plan(name, flavour, seeds=(0,), datasets=(dataset,))
        return {resolved.stage.key.split("/")[2]: resolved.run_dir
                for resolved in resolve_plan(plan, Path("/runs")) if resolved.stage.kind == "pretrain"}

    for dataset in ("fashion_mnist", "cifar10"):
        for flavour, default in (("official", "m2"), ("paper", "m3")):
            table6 = pretraining_runs("table6", flavour, dataset)
            assert pretraining_runs("table5", flavour, dataset)["patchmix"] == table6[default], (dataset, flavour)
            assert pretraining_runs("table7", flavour, dataset)["o2o+m2o+m2m"] == table6[default], (dataset, flavour)
            assert pretraining_runs("table5", flavour, dataset)["baseline"] == table6["m1"]
    study = {run for name in ("table3", "table5", "table6", "table7", "fig4")
             for run in pretraining_runs(name, "official", "fashion_mnist").values()}
    # 4 in Table 3 (PatchMix's is Table 6's m = 2; MoCo v3's tuned point is not PatchMix's with m = 1, so
    # Table 6's m = 1 is a run of its own), m = 1, 3, 4, 3 mixers, 4 loss subsets
    assert len(study) == 14


@pytest.mark.parametrize("dataset", ["fashion_mnist", "fashion_mnist_gpu"])
def test_table3_at_fashion_mnist_judges_learning_on_both_protocols(dataset):
    """A random-initialisation row for each protocol, so that a method that learned nothing is named on
    the linear probe as on kNN (its claims then read "not comparable")."""
    plan = build_plan("table3", datasets=(dataset,), seeds=(0, 1))
    random_init = {(s.rows[0].method, s.kind, s.seed): s for s in plan.stages if "-random-init/" in s.key}
    # Each method's own: the weights its run starts from (DINO and SDMP initialise otherwise than PatchMix).
    assert set(random_init) == {(f"{label}: random init (no pretraining)", protocol, seed)
                                for label in ("PatchMix", "MoCo v3 (m=1)", "DINO", "SDMP")
                                for protocol in ("knn", "linear") for seed in (0, 1)}
    assert all(s.overrides == ("source.encoder=random",) for s in random_init.values())
    method_of = {label: key for key, label in COMPARED_METHODS.items()}
    assert all(stage.after == f"table3/{dataset}/{method_of[method.split(':')[0]]}/seed{seed}/pretrain"
               for (method, _, seed), stage in random_init.items())


@pytest.mark.parametrize("dataset", ["fashion_mnist", "fashion_mnist_gpu"])
def test_fig4_judges_learning_on_table3s_knn_of_the_same_runs(dataset):
    """Figure 4's similarity cannot say whether a method learned: each method's runs get a kNN evaluation
    and each seed a random initialisation's, the very stages of Table 3 (same pretraining run, preset and
    overrides), so the study computes them once."""
    from slurm.graph import resolve_plan

    def evaluations(name: str) -> dict[tuple[str, int], tuple]:
        resolved = {r.stage.key: r for r in resolve_plan(build_plan(name, seeds=(0, 1), datasets=(dataset,)),
                                                          Path("/runs"))}
        return {(r.stage.key.split("/")[2], r.stage.seed): (r.stage.preset, r.stage.overrides, resolved[r.stage.after].run_dir)
                for r in resolved.values() if r.stage.kind == "knn"}

    fig4, table3 = evaluations("fig4"), evaluations("table3")
    assert set(fig4) == {(name + suffix, seed) for name in ("patchmix", "mocov3", "dino", "sdmp")
                         for suffix in ("", "-random-init") for seed in (0, 1)}
    assert all(fig4[key] == table3[key] for key in fig4)
    plan = build_plan("fig4", seeds=(0,), datasets=(dataset,))
    assert {s.kind for s in plan.stages if s.after and "-random-init/" not in s.key} == {"similarity", "knn"}
    assert sorted(s.rows[0].method for s in plan.stages if "-random-init/" in s.key) == \
        [f"{label}: random init (no pretraining)" for label in ("DINO", "MoCo v3 (m=1)", "PatchMix", "SDMP")]
    assert all(claim.protocols == ("similarity",) for claim in plan.claims)


def test_fig4_on_imagenet_has_the_knn_that_judges_learning():
    plan = build_plan("fig4", seeds=(0,), datasets=("imagenet",))
    knn = [s for s in plan.stages if s.kind == "knn"]
    assert {s.key for s in knn} == {f"fig4/{name}{suffix}/seed0/knn" for name in ("patchmix", "mocov3", "dino", "sdmp")
                                    for suffix in ("", "-random-init")}
    assert all(s.nodes == 1 for s in knn)  # evaluation jobs, not the pretraining's two nodes


@pytest.mark.parametrize("name", ["table5", "table6", "table7"])
def test_ablations_at_fashion_mnist_judge_learning_against_their_runs_shared_initialisation(name):
    """At a scale-down whether each row learned is shown, not assumed: one random-initialisation row per
    protocol and seed, which stands for every row because they all start from the same scheme."""
    plan = build_plan(name, datasets=("fashion_mnist",), seeds=(0, 1))
    random_init = [s for s in plan.stages if "-random-init/" in s.key]
    assert {(s.rows[0].method, s.kind, s.seed) for s in random_init} == \
        {("random init (no pretraining)", protocol, seed) for protocol in ("knn", "linear") for seed in (0, 1)}
    schemes = {(preset(s.preset).model.initialisation, preset(s.preset).model.position_embedding)
               for s in plan.stages if s.kind == "pretrain"}
    assert len(schemes) == 1
    assert not [s for s in build_plan(name, datasets=("cifar10",)).stages if "random-init" in s.key]
