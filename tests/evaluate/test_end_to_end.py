"""Pretrain (debug preset) -> kNN + linear probe + finetune -> result.json, through the CLI paths."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluate.protocols import resolve_eval_config
from evaluate import finetune, knn, linear


@pytest.mark.slow
def test_knn_and_linear_from_run_dir(pretrained_run):
    knn_config = resolve_eval_config("knn", "", str(pretrained_run), "", ["run.progress=false"])
    random_config = resolve_eval_config("knn", "", str(pretrained_run), "", ["run.progress=false",
                                                                             "source.encoder=random"])
    result = knn.main(knn_config)
    assert set(result["metrics"]) == {f"top{t}_k{k}" for t in (1, 5) for k in (10, 20, 100, 200)}
    assert result["train_size"] == 256 and result["test_size"] == 64
    run_dir = Path(result["run_dir"])
    assert run_dir.parent == pretrained_run / "eval"
    written = json.loads((run_dir / "result.json").read_text())
    assert written["metrics"] == result["metrics"] and written["source_digest"] == result["source_digest"]
    assert "provenance" in written and written["config_hash"]
    assert any((pretrained_run / "feature_cache").iterdir())  # the second protocol reuses them

    linear_config = resolve_eval_config("linear", "fast", str(pretrained_run), "", ["linear.epochs=3", "run.progress=false"])
    linear_result = linear.main(linear_config)
    assert {"top1_last", "top1_best", "best_epoch"} <= set(linear_result["metrics"])
    assert len((Path(linear_result["run_dir"]) / "metrics.jsonl").read_text().splitlines()) == 3

    again = knn.main(knn_config)  # complete: nothing recomputed
    assert again["metrics"] == result["metrics"]
    random_result = knn.main(random_config)  # the reference row: same architecture, no training
    assert random_result["source_digest"] != result["source_digest"] and random_result["encoder"] == "random"
    assert result["pretrain_preset"] == "debug_cpu" and result["encoder"] == "momentum_encoder"

    from evaluate import similarity

    similarity_result = similarity.main(resolve_eval_config("similarity", "", str(pretrained_run), "",
                                                            ["run.progress=false", "similarity.num_queries=32"]))
    assert len(similarity_result["similarity_profile"]) == 8  # own class + the 7 other classes
    assert -1 <= similarity_result["metrics"]["own_class_similarity"] <= 1


@pytest.mark.slow
def test_linear_with_augmentation_and_finetune_resume(pretrained_run):
    config = resolve_eval_config("linear", "official", str(pretrained_run), "",
                                 ["linear.epochs=1", "linear.batch_size=64", "run.progress=false"])
    assert config.linear.augment and config.linear.nesterov
    assert linear.main(config)["metrics"]["best_epoch"] == 1

    overrides = ["finetune.epochs=2", "finetune.warmup_epochs=1", "finetune.batch_size=64",
                 "finetune.model_ema=true", "run.progress=false"]
    first = finetune.main(resolve_eval_config("finetune", "", str(pretrained_run), "", overrides[:1] + ["finetune.epochs=1"] + overrides[1:]))
    assert first["metrics"]["best_epoch"] == 1 and "ema_top1_last" in first["metrics"]
    result = finetune.main(resolve_eval_config("finetune", "", str(pretrained_run), "", overrides))
    assert result["epochs"] == 2 and 0 <= result["metrics"]["top1_last"] <= 100


def test_bad_source_fails_before_work(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_eval_config("knn", "", str(tmp_path / "missing"))
    from common.config import ConfigError

    with pytest.raises(ConfigError, match="exactly one of"):
        resolve_eval_config("knn")
