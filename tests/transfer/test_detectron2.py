"""Mask R-CNN with our ViT through detectron2 (skipped, with the reason, where it is not installed)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

detectron2 = pytest.importorskip("detectron2", reason="detectron2 is not installed (see README: COCO transfer)")
pytestmark = [pytest.mark.detectron2, pytest.mark.slow]

from common.vit import build_vit  # noqa: E402
from common.encoder import EncoderSpec, SourceConfig, save_encoder_file  # noqa: E402
from common.runtime import RunConfig  # noqa: E402
import transfer.train as transfer_train  # noqa: E402
from common import preemption  # noqa: E402
from transfer.shapes import write_dataset  # noqa: E402
from transfer.train import TransferConfig, backbone_prefix, build_lazy_config, main, preemption_hook  # noqa: E402
from transfer.weights import check_backbone_loaded, load_encoder, to_detectron2  # noqa: E402


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("encoder")
    return save_encoder_file(build_vit("vit_mini", 16, 64).state_dict(), EncoderSpec("vit_mini", 16, 64),
                             folder / "vit_mini16.safetensors")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, str]:
    return write_dataset(tmp_path_factory.mktemp("shapes"), train=8, val=4)


@pytest.mark.parametrize("config_name,levels", [("smoke", ["p2", "p3", "p4", "p5", "p6"]),
                                                ("smoke_fpn", ["p2", "p3", "p4", "p5", "p6"])])
def test_backbone_strides_channels_and_complete_loading(encoder_file, tmp_path, config_name, levels):
    from detectron2.config import instantiate

    loaded = load_encoder(encoder_file=str(encoder_file))
    config = TransferConfig(config=config_name, source=SourceConfig(encoder_file=str(encoder_file)))
    cfg = build_lazy_config(config, loaded, tmp_path)
    model = instantiate(cfg.model)
    prefix = backbone_prefix(cfg)
    converted = to_detectron2(loaded.state_dict, prefix)
    check_backbone_loaded(model.state_dict(), converted, prefix, compare_values=False)  # nothing missing
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert not unexpected
    assert not [k for k in missing if k.startswith(prefix) and "rel_pos" not in k]
    backbone = model.backbone
    features = backbone(torch.randn(1, 3, 256, 256))
    assert list(features) == levels
    for index, level in enumerate(levels):
        assert features[level].shape == (1, 256, 256 // 2 ** (index + 2), 256 // 2 ** (index + 2))
    assert {k: v.stride for k, v in backbone.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


def smoke_config(encoder_file: Path, shapes: dict, output_root: Path, *overrides: str, **fields) -> TransferConfig:
    config = TransferConfig(config="smoke", source=SourceConfig(encoder_file=str(encoder_file)),
                            overrides=list(overrides), **shapes, **fields)
    config.run.output_root = str(output_root)
    return config


def coco_ap(gt_json: str, predictions: Path, task: str) -> float:
    """AP (percent) of detectron2's saved predictions, computed here with pycocotools alone."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ground_truth = COCO(gt_json)
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(str(predictions)), task)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return 100 * float(evaluation.stats[0])


def test_training_on_a_two_class_set_scores_real_predictions_and_resumes(encoder_file, shapes, tmp_path, monkeypatch,
                                                                        capsys):
    evaluations = []

    def counting_evaluation(cfg, model):
        evaluations.append(1)
        return evaluate(cfg, model)

    evaluate = transfer_train.evaluate_model
    monkeypatch.setattr(transfer_train, "evaluate_model", counting_evaluation)
    config = smoke_config(encoder_file, shapes, tmp_path / "transfer", "train.eval_period=3")
    result = main(config)
    run_dir = Path(result["run_dir"])
    written = json.loads((run_dir / "result.json").read_text())
    # Two classes from the json (not COCO's 80): every prediction maps to a category the evaluator knows.
    assert written["classes"] == ["box", "disc"]
    predictions = json.loads((run_dir / "evaluation" / "coco_instances_results.json").read_text())
    assert predictions and {p["category_id"] for p in predictions} <= {1, 2}
    for key, task in (("ap_box", "bbox"), ("ap_mask", "segm")):
        assert isinstance(written["metrics"][key], float)
        assert written["metrics"][key] == pytest.approx(coco_ap(shapes["val_json"], run_dir / "evaluation" /
                                                                "coco_instances_results.json", task), abs=1e-6)
    assert "missing_metrics" not in written
    assert written["max_iter"] == 6 and written["resumed_from_iteration"] is None
    assert len(evaluations) == 2  # at iteration 3 and at the end, not once more after training
    packages = json.loads((run_dir / "provenance.json").read_text())["packages"]
    assert {"detectron2", "pycocotools"} <= set(packages)

    capsys.readouterr()
    assert main(config)["metrics"] == written["metrics"]  # finished: says so, does nothing
    assert f"{run_dir} is complete; nothing to do (result: {run_dir / 'result.json'})" in capsys.readouterr().out

    # A run killed after its iteration-2 checkpoint: it resumes at iteration 3 and finishes.
    output = run_dir / "detectron2"
    assert (output / "model_0000002.pth").is_file()
    (run_dir / "result.json").unlink()
    (output / "last_checkpoint").write_text("model_0000002.pth")
    resumed = main(config)
    assert resumed["resumed_from_iteration"] == 3
    assert (run_dir / "result.json").is_file()


def iteration_losses(result: dict) -> list[float]:
    lines = (Path(result["run_dir"]) / "detectron2" / "metrics.json").read_text().splitlines()
    return [json.loads(line)["total_loss"] for line in lines if "total_loss" in line]


def test_run_seed_decides_head_initialisation_and_data_order(encoder_file, shapes, tmp_path):
    runs = [main(smoke_config(encoder_file, shapes, tmp_path / name, "train.max_iter=2", "train.checkpointer.period=10",
                              run=RunConfig(name="transfer", output_root="", seed=seed)))
            for name, seed in (("first", 0), ("again", 0), ("other", 1))]
    first, again, other = (iteration_losses(run) for run in runs)
    assert len(first) == 2 and first == again
    assert other != first


def test_unsupported_encoder_fails_before_anything_is_written(tmp_path, shapes):
    path = save_encoder_file(build_vit("vit_debug", 16, 64).state_dict(), EncoderSpec("vit_debug", 16, 64),
                             tmp_path / "debug.safetensors")
    config = smoke_config(path, shapes, tmp_path / "out")
    with pytest.raises(ValueError, match="at least 4 blocks"):
        main(config)
    assert not (tmp_path / "out").exists()


def test_a_tensor_skipped_for_its_shape_fails_the_load_check(encoder_file, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import instantiate

    loaded = load_encoder(encoder_file=str(encoder_file))
    cfg = build_lazy_config(TransferConfig(config="smoke"), loaded, tmp_path, num_classes=2)
    model = instantiate(cfg.model)
    prefix = backbone_prefix(cfg)
    converted = to_detectron2(loaded.state_dict, prefix)
    converted[prefix + "blocks.0.mlp.fc1.weight"] = converted[prefix + "blocks.0.mlp.fc1.weight"][:-1]  # one row short
    torch.save({"model": converted, "matching_heuristics": False}, tmp_path / "init.pth")
    DetectionCheckpointer(model).load(str(tmp_path / "init.pth"))  # logs the skipped tensor, raises nothing
    with pytest.raises(ValueError, match=r"blocks.0.mlp.fc1.weight: shape \(384, 96\) in the detector, \(383, 96\)"):
        check_backbone_loaded(model.state_dict(), converted, prefix)


def test_preemption_checkpoints_at_the_next_iteration(monkeypatch):
    saved, handed_over = [], []

    class Checkpointer:
        def save(self, name, **extra):
            saved.append((name, extra))

    hook = preemption_hook(Checkpointer(), "cpu")
    hook.trainer = type("Trainer", (), {"iter": 3})()
    monkeypatch.setattr(preemption, "requested", lambda: False)
    hook.after_step()
    assert not saved
    monkeypatch.setattr(preemption, "requested", lambda: True)
    monkeypatch.setattr(preemption, "hand_over", lambda: handed_over.append(True))
    hook.trainer.iter = 4
    hook.after_step()
    assert saved == [("model_0000004", {"iteration": 4})] and handed_over == [True]


def test_missing_coco_files_are_named(encoder_file, tmp_path):
    config = TransferConfig(config="smoke", source=SourceConfig(encoder_file=str(encoder_file)),
                            coco_root=str(tmp_path / "coco"))
    config.run.output_root = str(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"(?s)train_json: .*instances_train2017.json.*val2017"):
        main(config)
