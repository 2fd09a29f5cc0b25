"""Evaluation that cannot silently go wrong: divergence stops, unfinished runs are marked, damaged
inputs give one clear error, the recipe survives its extreme magnitudes, resume repeats the run."""
from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from common.errors import NonFiniteLossError
from common import lifecycle
from evaluate import finetune, knn
from evaluate.protocols import resolve_eval_config
from common.encoder import SourceConfig, load_source
from evaluate.features import FeatureConfig, features_for
from evaluate.linear import build_head, fit_head

REPOSITORY = Path(__file__).resolve().parents[2]


def test_linear_probe_stops_at_the_first_non_finite_loss():
    features, labels = torch.randn(40, 8), torch.randint(0, 3, (40,))
    head = build_head(8, 3, 0.01)
    saved = []

    def epoch_batches(epoch):
        for batch in range(4):
            yield (features[batch * 10:(batch + 1) * 10] * (float("nan") if epoch == 1 and batch == 2 else 1),
                   labels[batch * 10:(batch + 1) * 10])

    with pytest.raises(NonFiniteLossError, match=r"step 7 \(epoch 2\); stopped before saving epoch 2"):
        fit_head(head, head, torch.optim.SGD(head.parameters(), lr=0.1), epoch_batches, 4, features, labels,
                 epochs=3, peak_lr=0.1, history=[], on_epoch=saved.append)
    assert [record["epoch"] for record in saved] == [1]  # the last good epoch's checkpoint is the one kept


def _finetune_config(run: Path, *overrides: str):
    return resolve_eval_config("finetune", "", str(run), "", ["finetune.epochs=2", "finetune.warmup_epochs=1",
                                                              "finetune.batch_size=64", "run.progress=false",
                                                              *overrides])


@pytest.mark.slow
def test_finetune_stops_on_nan_keeping_the_last_good_checkpoint(pretrained_run, monkeypatch):
    calls = []
    original = finetune.SoftTargetCrossEntropy

    class PoisonedLoss(original):
        def forward(self, logits, targets):
            calls.append(1)
            loss = super().forward(logits, targets)
            return loss * float("nan") if len(calls) > 4 else loss  # 4 steps per epoch: epoch 2 diverges

    monkeypatch.setattr(finetune, "SoftTargetCrossEntropy", PoisonedLoss)
    config = _finetune_config(pretrained_run, "run.name=finetune-nan")
    with pytest.raises(NonFiniteLossError, match=r"finetune: non-finite loss at step 5 \(epoch 2\)"):
        finetune.main(config)
    run_dir = next((pretrained_run / "eval").glob("finetune-nan-*"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["checkpoint_00000001.pt"]
    assert not (run_dir / "result.json").exists()


@pytest.mark.slow
def test_finetune_resume_equals_uninterrupted(pretrained_run, monkeypatch, tmp_path):
    reference = finetune.main(_finetune_config(pretrained_run, f"run.output_root={tmp_path / 'reference'}"))

    def killed_after_first_epoch(*args, **kwargs):
        raise KeyboardInterrupt  # after epoch 1's checkpoint was written

    with monkeypatch.context() as patch:
        patch.setattr(lifecycle, "prune_checkpoints", killed_after_first_epoch)
        with pytest.raises(KeyboardInterrupt):
            finetune.main(_finetune_config(pretrained_run, f"run.output_root={tmp_path / 'resumed'}"))
    # The resumed half runs with another number of loader workers: the same run, the same numbers.
    resumed = finetune.main(_finetune_config(pretrained_run, f"run.output_root={tmp_path / 'resumed'}",
                                             "data.num_workers=1"))
    assert resumed["metrics"] == reference["metrics"]
    final = "checkpoints/checkpoint_00000002.pt"
    a = torch.load(Path(reference["run_dir"]) / final)["model"]
    b = torch.load(Path(resumed["run_dir"]) / final)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_posterize_at_extreme_magnitudes():
    """rand-m9-mstd0.5 reaches magnitude 10 (clipped): every op must run there and at 0."""
    from timm.data.auto_augment import rand_augment_transform

    from evaluate.finetune import with_valid_posterize

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for magnitude in (0, 10):
        transform = rand_augment_transform(f"rand-m{magnitude}-n1-mstd0-inc1", {"translate_const": 14})
        holder = with_valid_posterize(type("Holder", (), {"transforms": [transform]})())
        for op in holder.transforms[0].ops:
            op.prob = 1.0
            result = op(image)
            assert result.size == image.size, op.name
            if op.name == "PosterizeIncreasing" and magnitude == 10:  # 0 bits kept: every bit cleared
                assert np.asarray(result).max() == 0


@pytest.mark.slow
def test_unfinished_pretraining_is_evaluated_loudly_and_recorded(pretrained_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    import shutil

    shutil.copytree(pretrained_run, unfinished, ignore=shutil.ignore_patterns("eval", "feature_cache"))
    (unfinished / "result.json").unlink()
    config = resolve_eval_config("knn", "", str(unfinished), "", ["run.progress=false"])
    with pytest.warns(UserWarning, match="has not finished pretraining.*step 16"):
        result = knn.main(config)
    assert result["pretrain_complete"] is False and result["checkpoint_step"] == 16
    quiet = resolve_eval_config("knn", "", str(unfinished), "", ["run.progress=false", "source.allow_incomplete=true",
                                                                  "knn.ks=[10]"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert knn.main(quiet)["pretrain_complete"] is False


def _cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "evaluate", *arguments], capture_output=True, text=True,
                          cwd=REPOSITORY, timeout=120)


def test_bad_encoder_files_are_one_error_line(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "checkpoint.pt")
    save_file({"pos_embed": torch.zeros(1, 65, 48)}, str(tmp_path / "partial.safetensors"),
              metadata={"arch": "vit_debug", "patch_size": "4", "image_size": "32"})
    for path, message in ((tmp_path / "checkpoint.pt", "is not a safetensors encoder file"),
                          (tmp_path / "partial.safetensors", "the weights do not fit the architecture vit_debug")):
        completed = _cli("knn", "--encoder-file", str(path))
        assert completed.returncode == 2, completed.stderr
        lines = completed.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], completed.stderr


def test_unreadable_checkpoints_and_caches(pretrained_run, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(pretrained_run, broken, ignore=shutil.ignore_patterns("eval", "feature_cache"))
    for checkpoint in (broken / "checkpoints").iterdir():
        checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of the checkpoints"):
        load_source(SourceConfig(run_dir=str(broken)))

    encoder = load_source(SourceConfig(run_dir=str(pretrained_run)))
    config = resolve_eval_config("knn", "", str(pretrained_run), "", ["data.synthetic_test_size=16"])
    arguments = (encoder.build(), encoder.digest, config.data, "test", 32, FeatureConfig(), torch.device("cpu"),
                 tmp_path / "cache")
    first, _ = features_for(*arguments)
    (cache_file,) = (tmp_path / "cache").iterdir()
    cache_file.write_bytes(b"not a cache")
    with pytest.warns(UserWarning, match="unreadable.*recomputing"):
        again, _ = features_for(*arguments)
    torch.testing.assert_close(again, first)


def test_batch_larger_than_the_dataset_names_the_field(pretrained_run):
    from evaluate import linear

    config = resolve_eval_config("linear", "fast", str(pretrained_run), "", ["linear.batch_size=512",
                                                                             "run.progress=false"])
    with pytest.raises(ValueError, match="lower linear.batch_size"):
        linear.main(config)
