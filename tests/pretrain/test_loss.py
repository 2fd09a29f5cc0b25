"""The loss against a hand-written formula, gradient flow, and switching terms off."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pretrain.configs import PretrainConfig
from pretrain.loss import soft_target_cross_entropy
from pretrain.model import PatchMixModel
from pretrain.patchmix import mix_to_mix_targets, mix_to_origin_targets, origin_targets, patch_mix
from pretrain.methods.patchmix import patchmix_loss
from tests.tolerances import largest_magnitude, reordering_tolerance, vit_accumulated_terms


def hand_written_cross_entropy(queries, keys, targets, temperature) -> float:
    """Plain Python double loops: -sum_j t_ij log softmax_j(<q_i/|q_i|, k_j/|k_j|> / tau), mean over i."""
    total = 0.0
    for i, query in enumerate(queries.tolist()):
        q_norm = math.sqrt(sum(v * v for v in query))
        logits = []
        for key in keys.tolist():
            k_norm = math.sqrt(sum(v * v for v in key))
            logits.append(sum(a * b for a, b in zip(query, key)) / (q_norm * k_norm) / temperature)
        log_partition = math.log(sum(math.exp(value) for value in logits))
        total -= sum(t * (logit - log_partition) for t, logit in zip(targets[i].tolist(), logits))
    return total / len(queries)


@pytest.mark.parametrize("targets_fn", [
    lambda b: origin_targets(b), lambda b: mix_to_origin_targets(b, 3), lambda b: mix_to_mix_targets(b, 2),
    lambda b: mix_to_origin_targets(b // 2, 2, rank=1, world_size=2),
])
def test_soft_cross_entropy_matches_formula(targets_fn):
    torch.manual_seed(0)
    targets = targets_fn(6)
    queries = torch.randn(targets.shape[0], 5, dtype=torch.float64)
    keys = torch.randn(targets.shape[1], 5, dtype=torch.float64)
    got = soft_target_cross_entropy(queries, keys, targets, 0.2)
    assert got.item() == pytest.approx(hand_written_cross_entropy(queries, keys, targets, 0.2), rel=1e-5)


def _deterministic(config: PretrainConfig, **loss_weights) -> PretrainConfig:
    model = dataclasses.replace(config.model, drop_path_rate=0.0)
    return dataclasses.replace(config, model=model, loss=dataclasses.replace(config.loss, **loss_weights))


def _views(batch=8, size=32):
    torch.manual_seed(1)
    return [torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)]


def test_total_loss_is_the_published_weighted_sum(debug_config):
    config = _deterministic(debug_config)
    torch.manual_seed(0)
    model = PatchMixModel(config.model)
    view1, view2 = _views()
    loss, metrics = patchmix_loss(model, model, [view1, view2], config, torch.Generator().manual_seed(5))

    # Recompute every piece by hand with the same generator sequence (view 1, then view 2).
    generator = torch.Generator().manual_seed(5)
    m, patch, tau = config.mix.num_mixed, config.model.patch_size, config.loss.temperature
    mixed1, _ = patch_mix(view1, m, patch, generator)
    mixed2, _ = patch_mix(view2, m, patch, generator)
    key1, key2, key_mixed1 = model.keys([view1, view2, mixed1])
    query1, query_mixed2 = model([view1, mixed2])
    expected = (soft_target_cross_entropy(query1, key2, origin_targets(8), tau)
                + 0.5 * soft_target_cross_entropy(query_mixed2, key1, mix_to_origin_targets(8, m), tau)
                + 0.5 * soft_target_cross_entropy(query_mixed2, key_mixed1, mix_to_mix_targets(8, m), tau))
    torch.testing.assert_close(loss, expected)
    assert set(metrics) == {"origin", "mix_to_origin", "mix_to_mix", "key_std"}


@pytest.mark.parametrize("momentum_encoder", [True, False])
def test_gradients_reach_only_the_query_branch(debug_config, momentum_encoder):
    config = _deterministic(debug_config)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, momentum_encoder=momentum_encoder))
    model = PatchMixModel(config.model)
    keys = model.keys(_views())
    assert all(not k.requires_grad for k in keys)
    loss, _ = patchmix_loss(model, model, _views(), config, torch.Generator().manual_seed(0))
    loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith(("momentum_encoder", "momentum_projector")):
            assert parameter.grad is None, name
    assert model.predictor[0].weight.grad.abs().sum() > 0
    assert model.base_encoder.patch_embed.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("weights,terms", [
    ((1.0, 0.0, 0.0), {"origin"}),
    ((0.0, 0.5, 0.0), {"mix_to_origin"}),
    ((0.0, 0.0, 0.5), {"mix_to_mix"}),
    ((1.0, 0.5, 0.0), {"origin", "mix_to_origin"}),
])
def test_each_term_can_be_disabled(debug_config, weights, terms):
    config = _deterministic(debug_config, origin_weight=weights[0], mix_to_origin_weight=weights[1],
                            mix_to_mix_weight=weights[2])
    model = PatchMixModel(config.model)
    loss, metrics = patchmix_loss(model, model, _views(), config, torch.Generator().manual_seed(0))
    assert set(metrics) - {"key_std"} == terms
    weight_of = dict(zip(("origin", "mix_to_origin", "mix_to_mix"), weights))
    torch.testing.assert_close(loss, sum(weight_of[t] * metrics[t] for t in terms))


def test_num_mixed_one_is_symmetric_moco_v3(debug_config):
    """m = 1: L = CE(q1, k2) + 1/2 CE(q2, k1) + 1/2 CE(q2, k1) = the symmetrised MoCo v3 loss."""
    config = _deterministic(debug_config)
    config = dataclasses.replace(config, mix=dataclasses.replace(config.mix, num_mixed=1))
    model = PatchMixModel(config.model)
    view1, view2 = _views()
    loss, _ = patchmix_loss(model, model, [view1, view2], config, torch.Generator().manual_seed(0))
    key1, key2 = model.keys([view1, view2])
    query1, query2 = model([view1, view2])
    tau, one_hot = config.loss.temperature, origin_targets(8)
    expected = (soft_target_cross_entropy(query1, key2, one_hot, tau)
                + soft_target_cross_entropy(query2, key1, one_hot, tau))
    torch.testing.assert_close(loss, expected)


def test_multi_crop_terms(debug_config):
    config = _deterministic(debug_config)
    config = dataclasses.replace(config, augment=dataclasses.replace(
        config.augment, num_local_crops=2, local_crop_size=16))
    model = PatchMixModel(config.model)
    views = _views() + [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    loss, metrics = patchmix_loss(model, model, views, config, torch.Generator().manual_seed(0))
    assert {"local_origin", "local_mix_to_origin"} <= set(metrics)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("local_crops", [0, 2])
def test_batched_views_equal_one_call_per_view(debug_config, local_crops):
    """The fast path (one encoder call per group of same-size views) computes the same loss and
    gradients as one call per view."""
    config = _deterministic(debug_config)
    config = dataclasses.replace(config, augment=dataclasses.replace(config.augment, num_local_crops=local_crops,
                                                                     local_crop_size=16))
    views = _views() + [torch.randn(8, 3, 16, 16) for _ in range(local_crops)]
    results = []
    for batch_views in (False, True):
        model_config = dataclasses.replace(config.model, batch_views=batch_views)
        torch.manual_seed(0)
        model = PatchMixModel(model_config).double()
        loss, _ = patchmix_loss(model, model, [v.double() for v in views], dataclasses.replace(config, model=model_config),
                                torch.Generator().manual_seed(3))
        loss.backward()
        results.append((loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (reference, reference_grads), (fast, fast_grads) = results
    model = config.model
    terms = vit_accumulated_terms(model.arch, model.image_size, model.patch_size, batch=8 * len(views),
                                  head_widths=(model.projector_hidden_dim, model.output_dim, model.predictor_hidden_dim))
    torch.testing.assert_close(fast, reference, **reordering_tolerance(reference, terms))
    assert reference_grads.keys() == fast_grads.keys()
    gradient_magnitude = largest_magnitude(reference_grads.values())
    for name in reference_grads:
        # timm resamples the position embedding for the 16 px local crops in float32 (then back to
        # float64), so that one gradient carries float32 rounding; everything else is float64.
        dtype = torch.float32 if name.endswith("pos_embed") and local_crops else None
        torch.testing.assert_close(fast_grads[name], reference_grads[name],
                                   **reordering_tolerance(reference_grads[name], terms, dtype, gradient_magnitude))


@pytest.mark.slow
def test_compiled_encoders_keep_the_loss(debug_config):
    """torch.compile (model.compile) is a speed switch only: same loss and gradients within fp32 rounding."""
    config = _deterministic(debug_config)
    results = []
    for compiled in (False, True):
        model_config = dataclasses.replace(config.model, compile=compiled)
        torch.manual_seed(0)
        model = PatchMixModel(model_config)
        loss, _ = patchmix_loss(model, model, _views(), dataclasses.replace(config, model=model_config),
                                torch.Generator().manual_seed(3))
        loss.backward()
        results.append((loss.detach(), model.predictor[0].weight.grad.clone(), model.base_encoder.pos_embed.grad.clone()))
    model = config.model
    terms = vit_accumulated_terms(model.arch, model.image_size, model.patch_size, batch=2 * 8,
                                  head_widths=(model.projector_hidden_dim, model.output_dim, model.predictor_hidden_dim))
    gradient_magnitude = largest_magnitude(results[0][1:])
    for index, (reference, fast) in enumerate(zip(*results)):  # the compiled graph fuses and reorders fp32 sums
        magnitude = gradient_magnitude if index else None
        torch.testing.assert_close(fast, reference, **reordering_tolerance(reference, terms, magnitude=magnitude))
