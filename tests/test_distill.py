"""Distillation: losses by hand, a frozen teacher, the token's head follows the teacher."""

import math

import pytest
import torch
from torch import nn

from finch.config import LossConfig, ModelConfig, StudentConfig
from finch.distill import DistillationObjective, TwoHeadStudent, build_student, kl_distillation, load_teacher
from finch.errors import ModelError
from finch.io import save_tensors
from finch.models import build_model
from finch.train.engine import fit

from .conftest import TINY_MODEL, tiny_recipe

CPU = torch.device("cpu")
TINY_VIT = {"img_size": 12, "patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}


def student_cfg(**kw) -> StudentConfig:
    return StudentConfig(model=ModelConfig(name="deit_tiny_distilled_patch16_224", kwargs=TINY_VIT), **kw)


S = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 1.0]])
T = torch.tensor([[2.0, 0.0, 1.0], [0.5, 0.5, -0.5]])


def kl_by_hand(student, teacher, tau):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist(), strict=True):
        ps = [math.exp(v / tau) for v in s_row]
        pt = [math.exp(v / tau) for v in t_row]
        ps = [v / sum(ps) for v in ps]
        pt = [v / sum(pt) for v in pt]
        total += sum(q * math.log(q / p) for q, p in zip(pt, ps, strict=True))
    return total


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_kl_both_normalisations_by_hand(tau):
    total = kl_by_hand(S, T, tau)
    assert kl_distillation(S, T, tau, "batchmean").item() == pytest.approx(total * tau**2 / 2, rel=1e-5)
    assert kl_distillation(S, T, tau, "per_logit").item() == pytest.approx(total * tau**2 / 6, rel=1e-5)


class FixedTeacher(nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("out", logits)

    def forward(self, x):
        return self.out[: len(x)]


def ce(logits, target):
    return -torch.log_softmax(logits, -1)[torch.arange(len(target)), target].mean()


def test_soft_hard_and_none_losses_by_hand():
    y = torch.tensor([1, 2])
    cls, dist = S, S.flip(-1)
    loss_cfg = LossConfig(label_smoothing=0.0)
    cfg = student_cfg()
    soft = DistillationObjective(loss_cfg, 3, False, "soft", cfg, FixedTeacher(T))
    expected = 0.9 * ce(cls, y) + 0.1 * kl_by_hand(dist, T, 3.0) * 9 / 2
    assert soft.loss((cls, dist), y, torch.zeros(2, 1)).item() == pytest.approx(expected.item(), rel=1e-5)
    hard = DistillationObjective(loss_cfg, 3, False, "hard", cfg, FixedTeacher(T))
    expected = 0.5 * ce(cls, y) + 0.5 * ce(dist, T.argmax(-1))
    assert hard.loss((cls, dist), y, torch.zeros(2, 1)).item() == pytest.approx(expected.item(), rel=1e-6)
    none = DistillationObjective(loss_cfg, 3, False, "none", cfg, None)
    expected = 0.5 * (ce(cls, y) + ce(dist, y))
    assert none.loss((cls, dist), y, torch.zeros(2, 1)).item() == pytest.approx(expected.item(), rel=1e-6)
    token = DistillationObjective(loss_cfg, 3, False, "class_token", cfg, FixedTeacher(T))
    expected = 0.5 * ce(cls, y) + 0.5 * ce(cls, T.argmax(-1))
    assert token.loss(cls, y, torch.zeros(2, 1)).item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(hard.logits((cls, dist)), 0.5 * (cls + dist))


def test_students_have_the_right_heads():
    two = build_student(student_cfg(), "hard", 3, 1)
    assert isinstance(two, TwoHeadStudent)
    two.eval()
    cls, dist = two(torch.zeros(2, 1, 12, 12))  # both heads also in eval mode
    assert cls.shape == dist.shape == (2, 3)
    plain = build_student(student_cfg(), "class_token", 3, 1)
    assert not hasattr(plain, "head_dist") and plain(torch.zeros(2, 1, 12, 12)).shape == (2, 3)


def test_a_conv_tokenizer_student_has_a_token_per_map_position_and_both_tokens():
    """CCT's tokenizer through timm's HybridEmbed (issue 27, point 3): two blocks take 28 px to 7 x 7
    tokens; the student keeps its class and distillation tokens and heads."""
    from timm.layers import HybridEmbed

    from finch.config import FinchConfig

    tokenizer = {"channels": [8, 16]}
    TOKENS_VIT = {"embed_dim": 16, "depth": 1, "num_heads": 2}  # img_size, patch_size: follow the data (28 px; 1)
    cfg = FinchConfig.model_validate(
        {
            "student": {
                "model": {"name": "deit_tiny_distilled_patch16_224", "kwargs": TOKENS_VIT, "tokenizer": tokenizer}
            }
        }
    )
    assert cfg.student.model.kwargs["patch_size"] == 1
    student = build_student(cfg.student, "hard", 4, 1)
    vit = student.vit
    assert isinstance(vit.patch_embed, HybridEmbed) and vit.patch_embed.grid_size == (7, 7)
    assert vit.pos_embed.shape[1] == 49 + 2  # the map's positions, the class and distillation tokens
    student.eval()
    cls, dist = student(torch.zeros(3, 1, 28, 28))
    assert cls.shape == dist.shape == (3, 4)
    plain = build_student(cfg.student, "class_token", 4, 1)
    assert isinstance(plain.patch_embed, HybridEmbed) and plain(torch.zeros(2, 1, 28, 28)).shape == (2, 4)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        # 28 → 14 → 7 → 4 → 2 → 1 token a side
        ({"kwargs": {}, "tokenizer": {"channels": [8, 8, 8, 8, 8]}}, r"halve 28 px to 1 token\(s\) a side"),
        ({"kwargs": {"patch_size": 7}, "tokenizer": {"channels": [8]}}, "patch_size must be 1"),
    ],
)
def test_a_tokenizer_that_does_not_fit_the_images_fails_naming_the_key(model, message):
    from finch.config import FinchConfig

    with pytest.raises(ValueError, match=message):
        FinchConfig.model_validate({"student": {"model": {"name": "deit_tiny_distilled_patch16_224", **model}}})


def trained_teacher_file(task, tmp_path):
    torch.manual_seed(0)
    teacher = build_model(TINY_MODEL, task.num_classes, task.in_chans)
    path = tmp_path / "teacher.safetensors"
    save_tensors(path, teacher.state_dict())
    return path


def test_teacher_is_frozen_and_stays_in_eval_mode(toy_task, tmp_path):
    path = trained_teacher_file(toy_task, tmp_path)
    teacher = load_teacher(TINY_MODEL, path, 2, 1, CPU)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # BatchNorm statistics included
    cfg = student_cfg()
    objective = DistillationObjective(LossConfig(), 2, False, "soft", cfg, teacher)
    fit(
        build_student(cfg, "soft", 2, 1),
        toy_task,
        tiny_recipe(epochs=2),
        seed=0,
        device=CPU,
        objective=objective,
        progress=False,
    )
    assert not teacher.training
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_mismatched_teacher_fails_clearly(toy_task, tmp_path):
    path = trained_teacher_file(toy_task, tmp_path)
    with pytest.raises(ModelError, match=r"teacher does not fit the student's data \(5 classes"):
        load_teacher(TINY_MODEL, path, 5, 1, CPU)
    with pytest.raises(ModelError, match="3 channel"):
        load_teacher(TINY_MODEL, path, 2, 3, CPU)


def test_hard_distillation_drives_the_distillation_head_to_the_teachers_class(toy_task):
    k = 1

    class AlwaysK(nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 2)
            out[:, k] = 10.0
            return out

    cfg = student_cfg(hard={"alpha": 0.5})
    objective = DistillationObjective(LossConfig(), 2, False, "hard", cfg, AlwaysK())
    x = toy_task.to_inputs(toy_task.test.x, CPU)
    torch.manual_seed(1)
    student = build_student(cfg, "hard", 2, 1).eval()
    with torch.no_grad():
        share_before = (student(x)[1].argmax(1) == k).float().mean()
    assert share_before < 0.95
    result = fit(student, toy_task, tiny_recipe(epochs=6), seed=0, device=CPU, objective=objective, progress=False)
    with torch.no_grad():
        _, dist = result.model(x)
    assert (dist.argmax(1) == k).float().mean() > 0.95  # the token's head follows the teacher


# ------------------------------------------------------------------ cross-check with timm's DeiT task
def timm_token_task(student: nn.Module, teacher: nn.Module, signal: str, alpha: float, tau: float, smoothing: float):
    """timm's own DeiT token distillation (timm.task.TokenDistillationTask) in complementary
    weighting: (1 - alpha) * task loss + alpha * distillation loss, as DeiT and Finch weigh them."""
    from timm.task.token_distillation import TokenDistillationTask

    return TokenDistillationTask(
        student_model=student,
        teacher_model=teacher,
        criterion=nn.CrossEntropyLoss(label_smoothing=smoothing),
        distill_type=signal,
        task_loss_weight=1.0 - alpha,
        temperature=tau,
        device=CPU,
        verbose=False,
    )


@pytest.mark.parametrize(
    "signal,normalisation,smoothing",
    [("soft", "batchmean", 0.0), ("soft", "batchmean", 0.1), ("soft", "per_logit", 0.1), ("hard", "batchmean", 0.1)],
)
def test_losses_equal_timms_token_distillation(signal, normalisation, smoothing):
    """Finch's soft and hard objectives give timm 1.0's TokenDistillationTask loss on the same student,
    teacher and batch. timm's soft term is KL with reduction='batchmean' (Finch's batchmean);
    Finch's per_logit (DeiT's code: reduction='sum' / logits.numel()) is timm's term / classes."""
    num_classes, alpha, tau = 5, 0.3, 2.0
    torch.manual_seed(0)
    cfg = student_cfg(soft={"alpha": alpha, "tau": tau}, hard={"alpha": alpha}, kl_normalisation=normalisation)
    student = build_student(cfg, signal, num_classes, 1).train()
    teacher = build_model(TINY_MODEL, num_classes, 1).eval()
    x = torch.randn(6, 1, 12, 12)
    y = torch.tensor([0, 1, 2, 3, 4, 0])

    objective = DistillationObjective(LossConfig(label_smoothing=smoothing), num_classes, False, signal, cfg, teacher)
    ours = objective.loss(student(x), y, x)
    task = timm_token_task(student.vit, teacher, signal, alpha, tau, smoothing)
    theirs = task(x, y)
    if normalisation == "per_logit":
        expected = (1 - alpha) * theirs["task_loss"] + alpha * theirs["distill_loss"] / num_classes
    else:
        expected = theirs["loss"]
    assert ours.item() == pytest.approx(expected.item(), rel=1e-6)
    assert ours.item() != pytest.approx(((1 - alpha) * theirs["task_loss"]).item(), rel=1e-3)  # the teacher counts
