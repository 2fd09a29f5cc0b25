"""The method interface: a method registered from a test trains and evaluates like the built-in ones;
DINO and SDMP run end to end (pretrain -> kNN -> report row) and resume bit-identically; bad
method input is refused in one line before anything is written."""
from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.checkpoint import load_torch
from common.config import apply_overrides
from evaluate import knn
from evaluate.protocols import resolve_eval_config
from plans import tables
from plans.tables import Plan, Row, _pretrain_with_evals
from pretrain.methods import METHODS, register_method
from pretrain.model import PatchMixModel
from pretrain.train import main
from tests.pretrain import toy_method as toy_method_file
from reports.__main__ import write_reports
from slurm.executors import ClusterConfig
from slurm.graph import launch

ROOT = Path(__file__).resolve().parents[2]
SMALL_DINO = ("dino.out_dim=128", "dino.hidden_dim=32", "dino.bottleneck_dim=16")


@pytest.fixture
def toy_method():
    """ToyAlignment registered the way a plug-in would, and unregistered after the test."""
    method = register_method(toy_method_file.METHOD)  # the one line that adds a method
    yield method
    METHODS.pop(method.name)


@pytest.mark.slow
def test_a_method_registered_from_a_test_trains_and_evaluates(debug_config, toy_method):
    config = apply_overrides(debug_config, ["method=toy_alignment", "optim.epochs=2", "run.log_every_steps=4"])
    result = main(config)
    assert result["method"] == "toy_alignment" and result["steps"] == 16
    assert "alignment" in result["final_metrics"]
    run_dir = Path(result["run_dir"])
    record = json.loads((run_dir / "encoder.json").read_text())
    assert record["default"] == "momentum" and record["final"]["step"] == 16
    knn_result = knn.main(resolve_eval_config("knn", "", str(run_dir), "", ["run.progress=false"]))
    assert 0 <= knn_result["metrics"]["top1_k20"] <= 100


def _method_plan() -> Plan:
    plan = Plan("methods_smoke", "Generated images, debug ViT: PatchMix, DINO and SDMP -> kNN", baseline="PatchMix")
    resources = {"nodes": 1, "gpus_per_node": 0, "hours": 0.5}
    for label, overrides in (("PatchMix", ()), ("DINO", ("method=dino", *SMALL_DINO)), ("SDMP", ("method=sdmp",))):
        _pretrain_with_evals(plan, f"methods_smoke/{label.lower()}", "debug_cpu", 0, ("knn",),
                             {"knn": Row("methods_smoke", label, "ViT-debug/4", 0, "synthetic", "knn")}, resources,
                             overrides=overrides)
    return plan


@pytest.mark.slow
def test_every_method_pretrains_evaluates_and_reports_through_the_launcher(tmp_path, monkeypatch):
    monkeypatch.setitem(tables.PLANS, "methods_smoke", lambda **_: _method_plan())
    outcome = launch(_method_plan(), "inline", tmp_path / "runs", ClusterConfig(),
                     pretrain_overrides=["optim.epochs=2", "run.progress=false"],
                     eval_overrides=["run.progress=false"], echo=lambda _: None)
    assert set(outcome.values()) == {"ran"} and len(outcome) == 6
    (report,) = write_reports(["methods_smoke"], tmp_path / "runs", tmp_path / "out")
    lines = {line.split("|")[1].strip(): line for line in report.read_text().splitlines() if line.startswith("| ")}
    for label in ("PatchMix", "DINO", "SDMP"):
        ours = lines[label].split("|")[7].strip()
        assert ours != "not run" and 0.0 <= float(ours) <= 100.0, label
    methods = {json.loads(p.read_text())["method"] for p in (tmp_path / "runs").glob("*/result.json")}
    assert methods == {"patchmix", "dino", "sdmp"}


def _losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [("method=dino", *SMALL_DINO, "dino.norm_last_layer=false"),
                                       ("method=sdmp", "sdmp.paste_partner=true")], ids=["dino", "sdmp"])
def test_resume_from_a_checkpoint_repeats_the_uninterrupted_run_bitwise(debug_config, tmp_path, overrides):
    config = apply_overrides(debug_config, [*overrides, "optim.epochs=2", "run.log_every_steps=1",
                                            "run.checkpoint_every_steps=5", "run.keep_last_checkpoints=10"])
    full_dir = Path(main(config)["run_dir"])
    resumed_config = dataclasses.replace(config, run=dataclasses.replace(config.run, output_root=str(tmp_path / "b")))
    resumed_dir = tmp_path / "b" / full_dir.name
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(full_dir / "checkpoints" / "checkpoint_00000010.pt", resumed_dir / "checkpoints")  # died mid-epoch 1
    main(resumed_config)
    full, resumed = _losses(full_dir), _losses(resumed_dir)
    assert sorted(resumed) == list(range(11, 17))
    assert all(resumed[step] == full[step] for step in resumed)  # bitwise
    final_full = load_torch(full_dir / "checkpoints" / "checkpoint_00000016.pt")["model"]
    final_resumed = load_torch(resumed_dir / "checkpoints" / "checkpoint_00000016.pt")["model"]
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)  # the DINO center included


@pytest.mark.parametrize("overrides, field", [
    (["method=byol"], "method must be one of patchmix, dino, sdmp"),
    (["dino.teacher_temp=0.07"], "dino.teacher_temp is a field of method dino"),
    (["method=dino", "optim.batch_size=65536", "augment.num_local_crops=8"], "dino.out_dim 65536 needs about"),
    (["method=sdmp", "augment.num_local_crops=2"], "augment.num_local_crops=2: method sdmp has no local crops"),
    (["method=dino", "mix.num_mixed=3"], "mix.num_mixed is a field of method patchmix"),
])
def test_bad_method_input_is_one_error_line_and_writes_nothing(tmp_path, overrides, field):
    process = subprocess.run([sys.executable, "-m", "pretrain", "--preset", "debug_cpu",
                              f"run.output_root={tmp_path / 'runs'}", *overrides],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert process.returncode == 2, process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and field in lines[0], process.stderr
    assert not (tmp_path / "runs").exists()
