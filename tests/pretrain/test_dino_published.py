"""DINO against the code its authors published (github.com/facebookresearch/dino), on the same weights
and inputs, at the preset fashion_mnist_cpu_dino_official and at its scaled recipe before tuning (batch
32, 128 steps per epoch):

- the schedules: every step's learning rate, weight decay, EMA momentum and teacher temperature against
  utils.cosine_scheduler and DINOLoss.teacher_temp_schedule;
- the head and the loss: outputs, loss, centre and head gradients of `DinoHead` / `dino_loss` /
  `updated_center` against vision_transformer.DINOHead and main_dino.DINOLoss, for 5 consecutive steps
  at epoch 0 (teacher temperature in warm-up, last layer frozen) and at epoch 5;
- whole training steps: the project's `train.training_step` on its DinoModel against the body of
  main_dino.train_one_epoch (MultiCropWrapper, DINOHead, DINOLoss, get_params_groups, AdamW,
  clip_gradients, cancel_gradients_last_layer, the EMA loop, cosine_scheduler), 5 steps from step 0
  and from step 640: loss, every student and teacher parameter (the last layer among them), centre.
  Both sides run a copy of the project's ViT: the published ViT itself is not compared.

The published code is imported from a checkout, never copied here. Opt-in, as it needs that checkout:

    git clone https://github.com/facebookresearch/dino /path/to/dino
    DINO_PUBLISHED=/path/to/dino python -m pytest tests/pretrain/test_dino_published.py

Without DINO_PUBLISHED the module is skipped. The numbers are compared in float64, so that the only
differences left are roundoff of sums taken in another order (bounded by tests/tolerances.py).
"""
from __future__ import annotations

import copy
import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pretrain.configs import preset
from pretrain.methods import method_named
from pretrain.methods.dino import DinoHead, dino_fashion_mnist, dino_loss, teacher_temperatures, updated_center
from pretrain.model import build_encoder
from pretrain.train import build_training, training_step
from tests.tolerances import largest_magnitude, reordering_tolerance, vit_accumulated_terms

PUBLISHED_FOLDER = os.environ.get("DINO_PUBLISHED", "")
if not PUBLISHED_FOLDER:
    pytest.skip("DINO_PUBLISHED is not set: point it at a checkout of github.com/facebookresearch/dino to compare "
                "against the published DINO", allow_module_level=True)
if not (Path(PUBLISHED_FOLDER) / "main_dino.py").is_file():
    pytest.skip(f"DINO_PUBLISHED={PUBLISHED_FOLDER} has no main_dino.py: it must be a checkout of "
                "github.com/facebookresearch/dino", allow_module_level=True)

# The published DINOHead still uses torch.nn.utils.weight_norm, which torch now warns about.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")

PRESET = "fashion_mnist_cpu_dino_official"
COMPARED_STEPS = 5
# The published modules import each other by these top-level names (main_dino: `import utils`).
PUBLISHED_MODULE_NAMES = ("utils", "vision_transformer", "main_dino")
# The published weight-normalised last layer (torch.nn.utils.weight_norm) names its gain and direction
# weight_g and weight_v; the project's (torch.nn.utils.parametrizations.weight_norm) names them so.
PUBLISHED_NAMES = {"last_layer.parametrizations.weight.original0": "last_layer.weight_g",
                   "last_layer.parametrizations.weight.original1": "last_layer.weight_v"}


@pytest.fixture(scope="module")
def published():
    """main_dino.DINOLoss, vision_transformer.DINOHead and utils of the checkout, imported with its
    folder first on sys.path; sys.path and sys.modules are put back afterwards, so that the generic
    name `utils` neither shadows nor is shadowed by another module for the rest of the session."""
    folder = str(Path(PUBLISHED_FOLDER).resolve())
    saved_modules = {name: sys.modules.pop(name) for name in PUBLISHED_MODULE_NAMES if name in sys.modules}
    sys.path.insert(0, folder)
    try:
        spec = importlib.util.spec_from_file_location("main_dino", os.path.join(folder, "main_dino.py"))
        main_dino = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(main_dino)
    finally:
        sys.path.remove(folder)
        for name in PUBLISHED_MODULE_NAMES:
            sys.modules.pop(name, None)
        sys.modules.update(saved_modules)
    # The modules stay reachable through main_dino's own references to them.
    assert main_dino.utils.__file__.startswith(folder), main_dino.utils.__file__
    return SimpleNamespace(utils=main_dino.utils, DINOHead=main_dino.DINOHead, DINOLoss=main_dino.DINOLoss)


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A one-process gloo group: the published DINOLoss.update_center all-reduces unconditionally (the
    project's updated_center then all-reduces too, over the same single process). Destroyed at the
    end of the module so that no other test sees a distributed run."""
    distributed = torch.distributed
    if not (distributed.is_available() and distributed.is_gloo_available()):
        pytest.skip("torch.distributed with the gloo backend is unavailable; the published DINOLoss needs it")
    if distributed.is_initialized():
        pytest.skip("a process group already exists in this process; these tests need their own one-process group")
    store = tmp_path_factory.mktemp("process-group") / "store"
    distributed.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    distributed.destroy_process_group()


@pytest.fixture
def float64():
    """Build and compute in float64, restoring the default type afterwards: in float32 the two sides
    differ by up to ~2e-6 after 5 steps (roundoff amplified by the training), in float64 by ~2e-15,
    so a tolerance at float64's roundoff still tells a wrong formula from a reordered sum."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module", params=["tuned", "recipe"])
def config(request):
    """The preset (at `make tune`'s point: teacher temperature 0.04 throughout) and the scaled published
    recipe before tuning (0.04 -> 0.07 after one warm-up epoch), so the warm-up is compared too."""
    return preset(PRESET) if request.param == "tuned" else dino_fashion_mnist("cpu", tuned=False)


def _steps_per_epoch(config) -> int:
    return config.data.train_subset // config.optim.batch_size  # drop_last, as the training loader


def _number_of_crops(config) -> int:
    return 2 + config.augment.num_local_crops


def _published_loss(published, config):
    dino, optim = config.dino, config.optim
    return published.DINOLoss(dino.out_dim, _number_of_crops(config), dino.warmup_teacher_temp, dino.teacher_temp,
                              dino.warmup_teacher_temp_epochs, optim.epochs, dino.student_temp, dino.center_momentum)


@pytest.fixture(scope="module")
def published_schedules(published, config):
    """The per-step arrays that main_dino.train_dino builds: the learning rate scaled by batch / 256
    (one process), the weight decay, the teacher momentum towards 1, and the teacher temperature per
    epoch (DINOLoss.teacher_temp_schedule)."""
    optim, per_epoch = config.optim, _steps_per_epoch(config)
    cosine_scheduler = published.utils.cosine_scheduler
    return SimpleNamespace(
        learning_rate=cosine_scheduler(optim.base_lr * optim.batch_size / 256.0, optim.min_lr, optim.epochs,
                                       per_epoch, warmup_epochs=optim.warmup_epochs),
        weight_decay=cosine_scheduler(optim.weight_decay, optim.weight_decay_end, optim.epochs, per_epoch),
        momentum=cosine_scheduler(optim.momentum, 1, optim.epochs, per_epoch),
        teacher_temperature=_published_loss(published, config).teacher_temp_schedule)


def _head_and_loss_terms(embed_dim: int, dino, rows: int) -> int:
    """Terms summed along the longest chain of reductions of the head, the loss and their backward pass
    (tests/tolerances.py): each head Linear sums over its input width, the l2 normalisation and the
    last layer over the bottleneck; the teacher softmax, the student log-softmax and the cross-entropy
    each over the prototypes, the mean over the rows; the backward pass repeats these and a weight
    gradient sums over the rows."""
    head = embed_dim + (dino.num_layers - 1) * dino.hidden_dim + 2 * dino.bottleneck_dim
    loss = 3 * dino.out_dim + rows
    return 2 * (head + loss) + rows


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, accumulated_terms: int, magnitude=None, what=""):
    torch.testing.assert_close(actual.detach(), expected.detach(), msg=lambda message: f"{what}: {message}",
                               **reordering_tolerance(expected.detach(), accumulated_terms, torch.float64, magnitude))


def test_every_step_schedule_equals_the_published_cosine_scheduler_and_teacher_temperature(config,
                                                                                            published_schedules):
    per_epoch = _steps_per_epoch(config)
    total = config.optim.epochs * per_epoch
    method = method_named("dino")
    schedules = [method.schedule(config, step, per_epoch) for step in range(total)]
    ours = {"learning rate": [s.learning_rate for s in schedules], "weight decay": [s.weight_decay for s in schedules],
            "momentum": [s.momentum for s in schedules],
            "teacher temperature": [s.extra["teacher_temp"] for s in schedules]}
    theirs = {"learning rate": published_schedules.learning_rate, "weight decay": published_schedules.weight_decay,
              "momentum": published_schedules.momentum,
              # the published temperature is one per epoch
              "teacher temperature": published_schedules.teacher_temperature[np.arange(total) // per_epoch]}
    for name in ours:
        expected = torch.as_tensor(np.asarray(theirs[name], dtype=np.float64))
        assert expected.shape == (total,), name
        # One cosine-schedule value is ~8 rounded operations (difference, product, pi * step / steps,
        # cos, + 1, half, + final); np.linspace and numpy's cos may round otherwise than the
        # project's formula: the learning rates differ by an ulp or so (5e-20), a tenth of this bound.
        _assert_close(torch.tensor(ours[name], dtype=torch.float64), expected, accumulated_terms=8, what=name)


def _published_head(published, our_head: torch.nn.Module, dino, norm_last_layer: bool) -> torch.nn.Module:
    """A published DINOHead holding our head's weights (the last layer's names mapped)."""
    head = published.DINOHead(our_head.mlp[0].in_features, dino.out_dim, use_bn=dino.use_bn_in_head,
                              norm_last_layer=norm_last_layer, nlayers=dino.num_layers, hidden_dim=dino.hidden_dim,
                              bottleneck_dim=dino.bottleneck_dim)
    head.load_state_dict({_published_name(name): value for name, value in our_head.state_dict().items()}, strict=True)
    return head


def _published_name(name: str) -> str:
    for ours, theirs in PUBLISHED_NAMES.items():
        name = name.replace(ours, theirs)
    return name


@pytest.mark.parametrize("epoch", [0, 5])
def test_head_outputs_loss_centre_and_gradients_equal_the_published_dino_head_and_loss(
        epoch, config, published, published_schedules, process_group, float64):
    """5 consecutive steps from random backbone features, the centre carried from step to step on
    both sides; the teacher a little away from the student, as after some EMA steps."""
    dino, batch, crops = config.dino, config.optim.batch_size, _number_of_crops(config)
    embed_dim = build_encoder(config.model, 0.0).embed_dim  # the backbone's output width, the head's input
    torch.manual_seed(0)
    our_student = DinoHead(embed_dim, dino, dino.norm_last_layer)
    our_teacher = copy.deepcopy(our_student)
    with torch.no_grad():
        for parameter in our_teacher.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    their_student = _published_head(published, our_student, dino, dino.norm_last_layer)
    # main_dino builds the teacher's head with the default norm_last_layer=True
    their_teacher = _published_head(published, our_teacher, dino, norm_last_layer=True)
    ours_trained = {_published_name(n): p for n, p in our_student.named_parameters() if p.requires_grad}
    theirs_trained = {n: p for n, p in their_student.named_parameters() if p.requires_grad}
    assert sorted(ours_trained) == sorted(theirs_trained)  # the same parameters learn (the gain iff not normed)

    their_loss = _published_loss(published, config)
    our_center = torch.zeros(1, dino.out_dim)
    temperature = teacher_temperatures(dino.warmup_teacher_temp, dino.teacher_temp, dino.warmup_teacher_temp_epochs,
                                       config.optim.epochs)[epoch]
    assert temperature == pytest.approx(published_schedules.teacher_temperature[epoch], rel=1e-12)
    terms_per_step = _head_and_loss_terms(embed_dim, dino, crops * batch)
    generator = torch.Generator().manual_seed(epoch)
    for step in range(COMPARED_STEPS):
        # The centre carries the previous steps' roundoff: their terms add up.
        terms = (step + 1) * terms_per_step
        student_features = torch.randn(crops * batch, embed_dim, generator=generator)
        teacher_features = torch.randn(2 * batch, embed_dim, generator=generator)
        our_student_output, their_student_output = our_student(student_features), their_student(student_features)
        with torch.no_grad():
            our_teacher_output, their_teacher_output = our_teacher(teacher_features), their_teacher(teacher_features)
        our_value = dino_loss(list(our_student_output.chunk(crops)), list(our_teacher_output.chunk(2)), our_center,
                              dino.student_temp, float(temperature))
        our_center = updated_center(our_center, list(our_teacher_output.chunk(2)), dino.center_momentum)
        their_value = their_loss(their_student_output, their_teacher_output, epoch)  # updates its centre
        our_gradients = dict(zip(ours_trained, torch.autograd.grad(our_value, list(ours_trained.values()))))
        their_gradients = dict(zip(theirs_trained, torch.autograd.grad(their_value, list(theirs_trained.values()))))

        where = f"epoch {epoch} step {step}"
        _assert_close(our_student_output, their_student_output, terms, what=f"{where} student output")
        _assert_close(our_teacher_output, their_teacher_output, terms, what=f"{where} teacher output")
        _assert_close(our_value, their_value, terms, what=f"{where} loss")
        # The centre is a mean of teacher outputs: its terms have their magnitude, not its own.
        _assert_close(our_center, their_loss.center, terms, magnitude=largest_magnitude([their_teacher_output]),
                      what=f"{where} centre")
        # A gradient element near 0 cancels larger ones: every gradient takes the largest magnitude.
        gradient_magnitude = largest_magnitude(their_gradients.values())
        for name, gradient in their_gradients.items():
            _assert_close(our_gradients[name], gradient, terms, magnitude=gradient_magnitude,
                          what=f"{where} gradient of {name}")


def _published_pair(published, model, dino):
    """Student and teacher MultiCropWrappers around copies of the project's ViTs and mapped DINOHeads,
    as main_dino.train_dino builds them: the teacher's head with the default norm_last_layer, then
    loaded with the student's state, and without gradients."""
    student = published.utils.MultiCropWrapper(copy.deepcopy(model.base_encoder),
                                               _published_head(published, model.head, dino, dino.norm_last_layer))
    teacher = published.utils.MultiCropWrapper(copy.deepcopy(model.momentum_encoder), published.DINOHead(
        model.head.mlp[0].in_features, dino.out_dim, use_bn=dino.use_bn_in_head, nlayers=dino.num_layers,
        hidden_dim=dino.hidden_dim, bottleneck_dim=dino.bottleneck_dim))
    teacher.load_state_dict(student.state_dict())
    for parameter in teacher.parameters():
        parameter.requires_grad = False
    return student, teacher


def _published_step(published, schedules, student, teacher, loss, optimizer, images, step: int, config):
    """The body of main_dino.train_one_epoch in fp32 (fp16_scaler None), on one process."""
    epoch = step // _steps_per_epoch(config)
    for index, group in enumerate(optimizer.param_groups):
        group["lr"] = schedules.learning_rate[step]
        if index == 0:  # only the weight decay of the regularised group follows the schedule
            group["weight_decay"] = schedules.weight_decay[step]
    teacher_output = teacher(images[:2])  # only the 2 global crops pass through the teacher
    student_output = student(images)
    value = loss(student_output, teacher_output, epoch)
    optimizer.zero_grad()
    value.backward()
    if config.dino.clip_grad:
        published.utils.clip_gradients(student, config.dino.clip_grad)
    published.utils.cancel_gradients_last_layer(epoch, student, config.dino.freeze_last_layer)
    optimizer.step()
    with torch.no_grad():
        momentum = schedules.momentum[step]
        for student_parameter, teacher_parameter in zip(student.parameters(), teacher.parameters()):
            teacher_parameter.data.mul_(momentum).add_((1 - momentum) * student_parameter.detach().data)
    return value


def _our_parameters(model) -> tuple[dict, dict]:
    """Student and teacher parameters under the published MultiCropWrapper's names."""
    student = {**dict(model.base_encoder.named_parameters(prefix="backbone")),
               **dict(model.head.named_parameters(prefix="head"))}
    teacher = {**dict(model.momentum_encoder.named_parameters(prefix="backbone")),
               **dict(model.momentum_head.named_parameters(prefix="head"))}
    return ({_published_name(n): p for n, p in student.items()}, {_published_name(n): p for n, p in teacher.items()})


@pytest.mark.parametrize("first_epoch", [0, 5])
def test_whole_training_steps_equal_the_published_training_loop(first_epoch, config, published, published_schedules,
                                                                process_group, float64):
    """From step 0 (learning-rate warm-up from 0, last layer frozen, teacher temperature warming up)
    and from step 640 (epoch 5: all of it trained, the final teacher temperature)."""
    dino, model_config, batch = config.dino, config.model, config.optim.batch_size
    crops, per_epoch = _number_of_crops(config), _steps_per_epoch(config)
    training = build_training(config, torch.device("cpu"), torch.float32)
    model, optimizer = training.model, training.optimizer
    student, teacher = _published_pair(published, model, dino)
    their_optimizer = torch.optim.AdamW(published.utils.get_params_groups(student))
    their_loss = _published_loss(published, config)

    our_student, our_teacher = _our_parameters(model)
    assert sorted(our_student) == sorted(n for n, _ in student.named_parameters())  # the last layer among them
    assert sorted(our_teacher) == sorted(n for n, _ in teacher.named_parameters())
    # The same split into decayed and not decayed parameters (biases and norms not decayed).
    names = {id(p): n for parameters in (our_student, dict(student.named_parameters())) for n, p in parameters.items()}
    ours_groups = [sorted(names[id(p)] for p in group["params"]) for group in optimizer.param_groups]
    theirs_groups = [sorted(names[id(p)] for p in group["params"]) for group in their_optimizer.param_groups]
    assert ours_groups == theirs_groups

    # Terms of one step: the ViT forward and backward with the head (tests/tolerances.py), the loss
    # over the prototypes, and the gradient clipping's norm over the largest parameter; the steps'
    # roundoff adds up through the weights. Adam passes a gradient's relative error on to its update.
    # The two sides differ by at most ~3e-15 (loss) and ~1e-15 (weights), under 1e-4 of these bounds,
    # while a wrong setting (a centre momentum of 0.8) moves the centre by ~4e-2 at the first step.
    embed_dim = model.base_encoder.embed_dim
    head_widths = (embed_dim, *(dino.hidden_dim,) * (dino.num_layers - 1), dino.bottleneck_dim, dino.bottleneck_dim)
    step_terms = (vit_accumulated_terms(model_config.arch, model_config.image_size, model_config.patch_size,
                                        crops * batch, head_widths) + 2 * (3 * dino.out_dim + crops * batch)
                  + max(p.numel() for p in our_student.values()))
    generator = torch.Generator().manual_seed(1)
    first_step = first_epoch * per_epoch
    for step in range(first_step, first_step + COMPARED_STEPS):
        terms = (step - first_step + 1) * step_terms
        images = [torch.randn(batch, 3, model_config.image_size, model_config.image_size, generator=generator)
                  for _ in range(crops)]
        # precision float32 is the run's setting (no autocast); the tensors themselves are float64
        our_value, _, learning_rate, weight_decay, _ = training_step(model, model, optimizer, training.scaler, images,
                                                                     config, step, per_epoch, torch.float32)
        their_value = _published_step(published, published_schedules, student, teacher, their_loss,
                                      their_optimizer, images, step, config)

        where = f"step {step}"
        assert learning_rate == pytest.approx(published_schedules.learning_rate[step], rel=1e-12, abs=1e-18)
        assert weight_decay == pytest.approx(published_schedules.weight_decay[step], rel=1e-12)
        _assert_close(our_value, their_value, terms, what=f"{where} loss")
        _assert_close(model.center, their_loss.center, terms, what=f"{where} centre")
        # A weight that barely moved from 0 carries the roundoff of the largest updates: every
        # parameter takes the largest magnitude of the network's weights.
        for ours, theirs in ((our_student, dict(student.named_parameters())),
                             (our_teacher, dict(teacher.named_parameters()))):
            magnitude = largest_magnitude(theirs.values())
            kind = "student" if ours is our_student else "teacher"
            for name, parameter in theirs.items():
                _assert_close(ours[name], parameter, terms, magnitude=magnitude, what=f"{where} {kind} {name}")
