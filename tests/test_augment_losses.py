import pytest
import torch
import torch.nn.functional as F

from finch.config import AugmentConfig, LossConfig, OptimizerConfig, SchedulerConfig
from finch.train.augment import BatchAugment, random_flip, random_translate
from finch.train.losses import Objective, focal_cross_entropy, smoothed_targets
from finch.train.optim import build_optimizer, build_scheduler


def test_translate_matches_a_padded_shift():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) + 1
    g = torch.Generator().manual_seed(0)
    out = random_translate(x, 2, g)
    shifts = torch.randint(-2, 3, (2, 2), generator=torch.Generator().manual_seed(0))
    for i, (dy, dx) in enumerate(shifts.tolist()):
        padded = F.pad(x[i], (2, 2, 2, 2))
        expected = torch.roll(padded, shifts=(dy, dx), dims=(1, 2))[:, 2:7, 2:7]
        assert torch.equal(out[i], expected)


def test_flip_mirrors_about_half_the_batch():
    x = torch.rand(200, 1, 4, 4)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 60 < sum(flipped) < 140


def test_mixup_gives_soft_targets_that_sum_to_one():
    aug = BatchAugment(AugmentConfig(mixup_alpha=0.4, cutmix_alpha=1.0), 3, 0.1, torch.device("cpu"), black=-1.0)
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
    xm, ym = aug(x, y, torch.Generator().manual_seed(0))
    assert xm.shape == x.shape and ym.shape == (8, 3)
    assert torch.allclose(ym.sum(1), torch.ones(8))


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_cross_entropy_with_smoothing_equals_torch(smoothing):
    logits, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    ours = focal_cross_entropy(logits, smoothed_targets(y, 5, smoothing), gamma=0.0)
    assert torch.allclose(ours, F.cross_entropy(logits, y, label_smoothing=smoothing), atol=1e-6)


def test_focal_loss_hand_computed():
    logits = torch.tensor([[2.0, 0.0]])
    p = torch.softmax(logits, -1)[0, 0]
    expected = -((1 - p) ** 2) * torch.log(p)
    assert torch.allclose(focal_cross_entropy(logits, torch.tensor([[1.0, 0.0]]), gamma=2.0), expected)
    obj = Objective(LossConfig(name="focal", focal_gamma=2.0, label_smoothing=0.0), 2, mixing=False)
    assert torch.allclose(obj.loss(logits, torch.tensor([0]), None), expected)


def test_focal_down_weights_easy_examples():
    easy = torch.tensor([[5.0, 0.0]])
    t = torch.tensor([[1.0, 0.0]])
    assert focal_cross_entropy(easy, t, 2.0) < 0.01 * focal_cross_entropy(easy, t, 0.0)


def lrs(sched_cfg, epochs=6, steps=3, val_losses=None):
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, OptimizerConfig(name="sgd", lr=0.1))
    sched = build_scheduler(opt, sched_cfg, epochs, steps)
    out, n = [], 0
    for e in range(epochs):
        for _ in range(steps):
            n += 1
            sched.step_update(num_updates=n)
        sched.step(e + 1, (val_losses or [1.0] * epochs)[e])
        out.append(opt.param_groups[0]["lr"])
    return out


def test_schedules_do_what_they_say():
    cos = lrs(SchedulerConfig(name="cosine", warmup_epochs=0, min_lr=0.0))
    assert all(a >= b for a, b in zip(cos, cos[1:], strict=False)) and cos[-1] < 0.01
    # lrs()[i] is the rate of epoch i + 2 (1-based): milestones name the first decayed epoch
    multi = lrs(SchedulerConfig(name="multistep", warmup_epochs=0, milestones=[3, 5], decay_rate=0.1))
    assert multi[:4] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    plateau = lrs(
        SchedulerConfig(name="plateau", warmup_epochs=0, patience_epochs=1, decay_rate=0.5),
        val_losses=[1.0, 0.9, 0.9, 0.9, 0.9, 0.9],
    )
    # improvement, then flat: after patience (1) + 1 epochs without improvement the rate halves
    assert plateau[:3] == pytest.approx([0.1, 0.1, 0.1]) and plateau[3] == pytest.approx(0.05)
    restarts = lrs(SchedulerConfig(name="cosine_restarts", warmup_epochs=0, restarts=2, min_lr=0.0))
    assert restarts[1] < 0.05 and restarts[2] == pytest.approx(0.1)  # a warm restart


def test_sgd_nesterov_switch():
    model = torch.nn.Linear(2, 2)
    assert build_optimizer(model, OptimizerConfig(name="sgd", nesterov=True)).defaults["nesterov"]
    assert not build_optimizer(model, OptimizerConfig(name="sgd", nesterov=False)).defaults["nesterov"]


def test_translation_pads_with_black_not_the_mean():
    """A black image stays black after the engine's augmentation: the band a shift uncovers is
    filled with raw 0 in normalised units (-mean/std per channel), not with 0 (the mean, grey)."""
    from finch.data.splits import Split, TaskData
    from finch.train.engine import EpochPlan
    from tests.conftest import tiny_recipe

    black = torch.zeros(32, 2, 8, 8, dtype=torch.uint8)
    labels = torch.zeros(32, dtype=torch.int64)
    data = TaskData("toy", ["a", "b"], *(Split(black, labels),) * 3, mean=(0.3, 0.5), std=(0.3, 0.25), content_hash="")
    recipe = tiny_recipe(augment={"flip": True, "translate": 2})
    device = torch.device("cpu")
    model = torch.nn.Linear(1, 1)
    objective = Objective(recipe.loss, 2, mixing=False)
    plan = EpochPlan.build(model, model, data, recipe, device, objective, 32, 1, 1, "test")
    x = data.to_inputs(black, device)
    out, _ = plan.augment(x, labels, torch.Generator().manual_seed(0))
    assert torch.equal(out, x), "translation uncovered a band that is not black"
