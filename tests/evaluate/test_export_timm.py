"""Export that other tools load correctly: timm's public API alone rebuilds the exact encoder."""
from __future__ import annotations

import json

import pytest
import timm
import torch

from common.config import apply_overrides
from common.encoder import EncoderSpec, SourceConfig, load_encoder_file, load_source
from evaluate.__main__ import cli
from evaluate.convert import export_run
from pretrain.configs import preset
from pretrain.train import main as pretrain
from tests.tolerances import reordering_tolerance, vit_accumulated_terms
from transfer.weights import backbone_arguments


@pytest.fixture(scope="module")
def twelve_head_run(tmp_path_factory):
    """A run whose head count is not its arch's default (vit_mini: 3 by default, here 6)."""
    config = apply_overrides(preset("debug_cpu"), [f"run.output_root={tmp_path_factory.mktemp('runs')}",
                                                   "run.progress=false", "optim.max_steps=2", "model.arch=vit_mini",
                                                   "model.num_heads=6"])
    return pretrain(config)["run_dir"]


def test_export_folder_loads_through_timm_alone(twelve_head_run, tmp_path):
    folder = export_run(twelve_head_run, tmp_path / "exported")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_args"]["num_heads"] == 6 and config["architecture"].startswith("vit_")
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()  # no extra argument
    ours = load_source(SourceConfig(run_dir=str(twelve_head_run))).build().eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = ours(images)
        terms = vit_accumulated_terms("vit_mini", image_size=32, patch_size=4, batch=len(images), backward=False)
        torch.testing.assert_close(model(images), reference, **reordering_tolerance(reference, terms))
        # The same weights read with the arch's default heads compute other features: why the count travels.
        wrong = timm.create_model(f"local-dir:{folder}", pretrained=True, num_heads=3).eval()
        assert not torch.allclose(wrong(images), ours(images), atol=1e-3)


def test_safetensors_export_names_the_heads_and_mismatches_fail(twelve_head_run, tmp_path):
    loaded = load_encoder_file(export_run(twelve_head_run, tmp_path / "encoder.safetensors"))
    assert loaded.spec.heads == 6
    with pytest.raises(ValueError, match="contradicts the encoder's 6 heads"):
        backbone_arguments(EncoderSpec("vit_mini", 16, 64, 6), num_heads=3)
    assert backbone_arguments(EncoderSpec("vit_mini", 16, 64, 6), num_heads=0)["num_heads"] == 6


# What export writes -> what convert is given.
EXPORTED_INPUTS = {"encoder file": ("encoder.safetensors", "encoder.safetensors"),
                   "timm folder": ("exported", "exported"),
                   "timm folder's weights": ("exported", "exported/model.safetensors")}


@pytest.fixture(params=list(EXPORTED_INPUTS))
def six_head_export(request, twelve_head_run, tmp_path):
    """The 6-head run exported as an encoder file (heads in its metadata) or as a timm folder (heads in
    its config.json; its model.safetensors has no metadata)."""
    written, given = EXPORTED_INPUTS[request.param]
    export_run(twelve_head_run, tmp_path / written)
    return tmp_path / given


def test_convert_refuses_a_head_count_the_input_contradicts(six_head_export, tmp_path, capsys):
    output = tmp_path / "converted.safetensors"
    with pytest.raises(SystemExit) as stopped:
        cli(["convert", "--format", "timm", "--num-heads", "3", str(six_head_export), str(output)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: --num-heads 3 contradicts the 6 heads stated in"), lines
    assert not output.exists()


def test_convert_takes_the_head_count_the_input_states(six_head_export, tmp_path, capsys):
    for given in ([], ["--num-heads", "6"]):  # left out, or agreeing
        output = tmp_path / f"converted{len(given)}.safetensors"
        cli(["convert", "--format", "timm", *given, str(six_head_export), str(output)])
        assert load_encoder_file(output).spec.heads == 6
