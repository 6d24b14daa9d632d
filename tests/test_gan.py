"""Conditional DCGAN: shapes, conditioning, quality measures, determinism."""

import pytest
import torch
from torch import nn

from finch.gan import (
    Discriminator,
    DomainFeatures,
    GanConfig,
    Generator,
    fid_kid,
    precision_recall,
    sample,
    subsample,
    synthetic_quality,
    train_gan,
    upsampling_plan,
)

from .conftest import make_task

CPU = torch.device("cpu")


@pytest.mark.parametrize("size", [28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("conditioning", ["concat", "projection"])
def test_shapes_and_range(size, channels, conditioning):
    cfg = GanConfig(width=8, conditioning=conditioning)
    gen, disc = Generator(4, channels, size, cfg), Discriminator(4, channels, size, cfg)
    y = torch.tensor([0, 1, 2, 3])
    x = gen(torch.randn(4, cfg.z_dim), y)
    assert x.shape == (4, channels, size, size)
    assert x.min() >= -1 and x.max() <= 1
    assert disc(x, y).shape == (4,)


def test_upsampling_plan():
    assert upsampling_plan(28) == (7, 2) and upsampling_plan(32) == (4, 3) and upsampling_plan(64) == (4, 4)
    with pytest.raises(ValueError, match="cannot be reached"):
        upsampling_plan(7)


def test_dcgan_initialisation():
    gen = Generator(2, 1, 28, GanConfig(width=16))
    conv = next(m for m in gen.modules() if isinstance(m, nn.ConvTranspose2d))
    assert abs(conv.weight.std().item() - 0.02) < 0.005 and abs(conv.weight.mean().item()) < 0.005


def test_conditioning_works_on_bright_and_dark_squares():
    task = make_task(n_train=256, size=28)  # label 0: dark square, label 1: bright square
    result = train_gan(task, GanConfig(width=16, epochs=25, batch_size=32), seed=0, device=CPU)
    images, labels = sample(result.generator, 50, seed=1, device=CPU)
    centre = images[:, :, 9:19, 9:19].float().mean(dim=(1, 2, 3))
    predicted = (centre > 100).long()  # the real squares: ~20-60 (dark) vs ~180-220 (bright)
    assert (predicted == labels).float().mean() > 0.9
    assert len(result.history) == 25 and {"d_loss", "g_loss"} <= set(result.history[0])


def test_generate_is_deterministic_for_a_seed():
    gen = Generator(3, 1, 28, GanConfig(width=8))
    a, la = sample(gen, 5, seed=7, device=CPU)
    b, lb = sample(gen, 5, seed=7, device=CPU)
    c, _ = sample(gen, 5, seed=8, device=CPU)
    assert torch.equal(a, b) and torch.equal(la, lb) and a.dtype == torch.uint8
    assert not torch.equal(a, c)
    assert la.tolist() == [0] * 5 + [1] * 5 + [2] * 5


def flat_features(n_features: int = 32) -> DomainFeatures:
    torch.manual_seed(0)
    projection = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, n_features))
    return DomainFeatures(projection, [0.5], [0.5])


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_noise():
    images = make_task(n_train=200, size=28).train.x
    features = flat_features()
    real = features.of(images)
    same = fid_kid(real, real)
    assert abs(same["fid"]) < 1e-3 and abs(same["kid"]) < 1e-3
    gen = torch.Generator().manual_seed(0)
    scores = []
    for sigma in (10, 40, 80):
        noisy = (images.float() + sigma * torch.randn(images.shape, generator=gen)).clamp(0, 255).to(torch.uint8)
        scores.append(fid_kid(real, features.of(noisy))["fid"])
    assert 0 < scores[0] < scores[1] < scores[2]


def test_precision_recall_by_construction():
    real = torch.randn(200, 2)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    far = real + 100
    assert precision_recall(real, far) == (0.0, 0.0)
    collapsed = real[:1].repeat(200, 1) + 1e-3 * torch.randn(200, 2)  # all fakes at one real point
    precision, recall = precision_recall(real, collapsed)
    assert precision == 1.0 and recall < 0.1  # faithful but not diverse


def test_quality_measures_compare_equal_sizes():
    """The larger set is subsampled (seeded) to the smaller one's size before FD, KID and k-NN
    precision/recall: unequal sizes bias FD and unbalance precision against recall."""
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(2000, 8, generator=g), torch.randn(200, 8, generator=g)
    assert fid_kid(real, fake, seed=3) == fid_kid(subsample(real, 200, seed=3), fake, seed=3)
    assert precision_recall(real, fake, 3, seed=3) == precision_recall(subsample(real, 200, seed=3), fake, 3)
    assert fid_kid(fake, real, seed=3)["fid"] == pytest.approx(fid_kid(real, fake, seed=3)["fid"])


def test_subsample_is_seeded_and_without_replacement():
    x = torch.arange(50).float()[:, None]
    a, b = subsample(x, 20, seed=1), subsample(x, 20, seed=1)
    assert torch.equal(a, b) and len(set(a[:, 0].tolist())) == 20
    assert not torch.equal(a, subsample(x, 20, seed=2))
    assert torch.equal(subsample(x, 80, seed=1), x)  # nothing to drop


def test_synthetic_quality_has_a_real_vs_real_reference_of_the_same_size_per_class():
    g = torch.Generator().manual_seed(0)
    real_y = torch.arange(400) % 2  # 200 real per class
    real = torch.randn(400, 4, generator=g) + 5 * real_y[:, None]
    fake_y = torch.tensor([0] * 60 + [1] * 120)
    fake = torch.randn(180, 4, generator=g) + 5 * fake_y[:, None]
    q = synthetic_quality(real, real_y, fake, fake_y, ["a", "b"], k=3, seed=0)
    assert q["overall"]["n"] == 180 and q["overall"]["reference"]["n"] == 180
    assert q["per_class"]["a"]["n"] == 60 and q["per_class"]["a"]["reference"]["n"] == 60
    # class b: 120 generated, but only 200 real: two disjoint real subsets of 100 is the most that fits
    assert q["per_class"]["b"]["n"] == 120 and q["per_class"]["b"]["reference"]["n"] == 100
    for row in (q["overall"], *q["per_class"].values()):
        assert {"fid", "kid", "kid_std", "precision", "recall"} <= set(row) <= set(row["reference"]) | {"reference"}
        assert 0.7 < row["reference"]["precision"] <= 1 and 0.7 < row["reference"]["recall"] <= 1


def test_kid_spread_is_over_subsets_smaller_than_the_set_and_the_reference_over_several_draws():
    """Issue 26.6: KID's 50 subsets were the whole set (a spread of ~1e-16); they are half of it
    now. The real-vs-real reference is the mean and SD of several disjoint draws, so its noise
    shows."""
    from finch.gan import REFERENCE_DRAWS, fid_kid, kid_subset_size

    assert kid_subset_size(400) == 200 and kid_subset_size(5000) == 1000 and kid_subset_size(3) == 2
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g) + 0.3
    assert fid_kid(a, b)["kid_std"] > 1e-6
    real_y = torch.arange(400) % 2
    real = torch.randn(400, 4, generator=g)
    q = synthetic_quality(real, real_y, real[:100], real_y[:100], ["a", "b"], k=3, seed=0)
    ref = q["overall"]["reference"]
    assert ref["draws"] == REFERENCE_DRAWS and ref["fid_sd"] > 0 and ref["kid_sd"] > 0
    assert ref["precision_sd"] >= 0 and ref["recall_sd"] >= 0
