"""Class-conditional DCGAN: labelled synthetic images, and how good they are.

Generator and discriminator follow DCGAN (Radford et al. 2016): transposed convolutions,
batch norm, ReLU / LeakyReLU(0.2), weights drawn from N(0, 0.02), Adam(2e-4, betas
(0.5, 0.999)). They are sized from the image size (28, 32, 64 px, ...) and channel count:
the generator starts from a ``base x base`` map (7 for 28 px, 4 for 32 and 64 px) and
doubles it up to the image size; the discriminator mirrors it. The label conditions both:
the generator gets a label embedding concatenated to the noise; the discriminator either
gets one-hot label channels concatenated to the image (``concat``, the classic conditional
DCGAN, the default: it conditioned faster in our tests) or scores a label embedding
against its features (``projection``, Miyato & Koyama 2018).

"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from finch.config import GanConfig
from finch.data.splits import TaskData

log = logging.getLogger(__name__)


def upsampling_plan(image_size: int) -> tuple[int, int]:
    """(start size, number of doublings): 28 → (7, 2), 32 → (4, 3), 64 → (4, 4)."""
    start, doublings = image_size, 0
    while start % 2 == 0 and start > 7:
        start //= 2
        doublings += 1
    if doublings == 0:
        raise ValueError(f"image size {image_size} cannot be reached by doubling a small map; use 28, 32, 64, ...")
    return start, doublings


def init_dcgan(module: nn.Module) -> None:
    """DCGAN initialisation: convolutions N(0, 0.02); batch norm scale N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):  # label embeddings keep N(0, 1)
        nn.init.normal_(module.weight, 0.0, 0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    """(noise, label) → image in [-1, 1]."""

    def __init__(self, num_classes: int, channels: int, image_size: int, cfg: GanConfig):
        super().__init__()
        self.start, doublings = upsampling_plan(image_size)
        self.z_dim, self.num_classes = cfg.z_dim, num_classes
        widths = [cfg.width * 2 ** (doublings - i) for i in range(doublings + 1)]  # e.g. 256, 128, 64
        self.embed = nn.Embedding(num_classes, cfg.embed_dim)
        self.project = nn.Sequential(
            nn.Linear(cfg.z_dim + cfg.embed_dim, widths[0] * self.start**2, bias=False),
            nn.BatchNorm1d(widths[0] * self.start**2),
            nn.ReLU(True),
        )
        layers: list[nn.Module] = []
        for i in range(doublings):
            last = i == doublings - 1
            out = channels if last else widths[i + 1]
            layers.append(nn.ConvTranspose2d(widths[i], out, 4, 2, 1, bias=last))
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(out), nn.ReLU(True)]
        self.body = nn.Sequential(*layers)
        self.widths = widths
        self.apply(init_dcgan)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.project(torch.cat([z, self.embed(y)], dim=1))
        return self.body(h.view(len(z), self.widths[0], self.start, self.start))


class Discriminator(nn.Module):
    """(image, label) → real/fake logit."""

    def __init__(self, num_classes: int, channels: int, image_size: int, cfg: GanConfig):
        super().__init__()
        start, doublings = upsampling_plan(image_size)
        self.conditioning, self.image_size = cfg.conditioning, image_size
        self.num_classes = num_classes
        in_ch = channels + (num_classes if cfg.conditioning == "concat" else 0)
        widths = [cfg.width * 2**i for i in range(doublings)]  # e.g. 64, 128
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            layers.append(nn.Conv2d(in_ch if i == 0 else widths[i - 1], width, 4, 2, 1, bias=i == 0))
            layers += [nn.LeakyReLU(0.2, True)] if i == 0 else [nn.BatchNorm2d(width), nn.LeakyReLU(0.2, True)]
        self.body = nn.Sequential(*layers, nn.Flatten())
        features = widths[-1] * start * start
        self.score = nn.Linear(features, 1)
        if cfg.conditioning == "projection":
            self.embed = nn.Embedding(num_classes, features)
        self.apply(init_dcgan)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.conditioning == "concat":  # one constant one-hot channel per class
            label_map = F.one_hot(y, self.num_classes).to(x.dtype)[:, :, None, None]
            label_map = label_map.expand(-1, -1, self.image_size, self.image_size)
            return self.score(self.body(torch.cat([x, label_map], dim=1))).squeeze(1)
        h = self.body(x)
        return self.score(h).squeeze(1) + (self.embed(y) * h).sum(1)


@dataclass
class GanResult:
    generator: Generator
    history: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def to_gan_range(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def save_grid(images: torch.Tensor, per_row: int, path) -> None:
    """uint8 images → one PNG, ``per_row`` images per row (one row per class)."""
    from PIL import Image
    from torchvision.utils import make_grid

    from finch.io import write_with

    grid = make_grid(images.float() / 255.0, nrow=per_row, padding=1, pad_value=1.0)
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(array[:, :, 0] if images.shape[1] == 1 else array)
    scale = max(1, 56 // images.shape[-1])  # small images are enlarged (nearest) to stay readable
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    write_with(path, lambda tmp: image.save(tmp, format="png"))


def train_gan(data: TaskData, cfg: GanConfig, seed: int, device: torch.device, grid_dir=None) -> GanResult:
    """Adversarial training on ``data.train`` (non-saturating loss); warns when it looks broken.

    With ``grid_dir``, writes ``epoch_<n>.png``: a fixed-noise sample grid, one row per class.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    channels, size, k = data.in_chans, data.image_size, data.num_classes
    gen = Generator(k, channels, size, cfg).to(device)
    disc = Discriminator(k, channels, size, cfg).to(device)
    opt_g = torch.optim.Adam(gen.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    x_all, y_all = data.train.x, data.train.y
    batch = min(cfg.batch_size, len(x_all))
    steps = max(1, len(x_all) // batch)
    result = GanResult(generator=gen)
    low_d = 0
    for epoch in range(cfg.epochs):
        gen.train()
        disc.train()
        order = torch.randperm(len(x_all), generator=g)
        sums = {"d_loss": 0.0, "g_loss": 0.0, "d_real": 0.0, "d_fake": 0.0}
        for step in range(steps):
            idx = order[step * batch : (step + 1) * batch]
            real, y = to_gan_range(x_all[idx]).to(device), y_all[idx].to(device)
            z = torch.randn(len(idx), cfg.z_dim, generator=g).to(device)
            fake = gen(z, y)
            d_real, d_fake = disc(real, y), disc(fake.detach(), y)
            d_loss = F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + (
                F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
            )
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            g_score = disc(fake, y)
            g_loss = F.binary_cross_entropy_with_logits(g_score, torch.ones_like(g_score))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            if not (math.isfinite(d_loss.item()) and math.isfinite(g_loss.item())):
                raise FloatingPointError(f"GAN loss became non-finite at epoch {epoch + 1}; lower gan.lr")
            sums["d_loss"] += d_loss.item()
            sums["g_loss"] += g_loss.item()
            sums["d_real"] += torch.sigmoid(d_real).mean().item()
            sums["d_fake"] += torch.sigmoid(d_fake).mean().item()
        row = {"epoch": epoch + 1, **{key: v / steps for key, v in sums.items()}}
        result.history.append(row)
        if grid_dir is not None:
            images, _ = sample(gen, cfg.grid_per_class, seed + 1, device)  # same noise every epoch
            save_grid(images, cfg.grid_per_class, Path(grid_dir) / f"epoch_{epoch + 1:03d}.png")
        log.info(
            "gan: epoch %d/%d d_loss %.3f g_loss %.3f D(real) %.2f D(fake) %.2f",
            epoch + 1,
            cfg.epochs,
            row["d_loss"],
            row["g_loss"],
            row["d_real"],
            row["d_fake"],
        )
        low_d = low_d + 1 if row["d_loss"] < cfg.d_loss_floor else 0
        if low_d == cfg.d_loss_patience:
            msg = (
                f"discriminator loss below {cfg.d_loss_floor} for {low_d} epochs (epoch {epoch + 1}): "
                "it wins outright and the generator gets no signal; lower gan.lr or the discriminator width"
            )
            log.warning(msg)
            result.warnings.append(msg)
    result.warnings += collapse_warnings(gen, data, cfg, seed, device)
    return result


@torch.no_grad()
def sample(gen: Generator, per_class: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` images of every class from a fixed seed: uint8 ``[N, C, H, W]`` and labels."""
    g = torch.Generator().manual_seed(seed)
    gen.eval()
    labels = torch.arange(gen.num_classes).repeat_interleave(per_class)
    z = torch.randn(len(labels), gen.z_dim, generator=g)
    images = torch.cat(
        [gen(z[i : i + 500].to(device), labels[i : i + 500].to(device)).cpu() for i in range(0, len(labels), 500)]
    )
    return to_uint8(images), labels


def collapse_warnings(gen: Generator, data: TaskData, cfg: GanConfig, seed: int, device) -> list[str]:
    """Warn for classes whose samples are near-identical compared with the real images' spread."""
    fake, labels = sample(gen, 16, seed, device)
    out = []
    for c, name in enumerate(data.class_names):
        f = fake[labels == c].float().flatten(1)
        r = data.train.x[data.train.y == c][:16].float().flatten(1)
        if len(r) < 2:
            continue
        spread = torch.pdist(f).mean() / torch.pdist(r).mean()
        if spread < cfg.collapse_ratio:
            msg = (
                f"class {name!r}: generated samples are near-identical "
                f"(spread {spread:.3f} of the real one): mode collapse"
            )
            log.warning(msg)
            out.append(msg)
    return out


# ------------------------------------------------------------------------------ quality
class DomainFeatures(nn.Module):
    """uint8 images → the pretrained backbone's pooled features: the domain's own feature space
    (Inception weights are not reachable offline)."""

    def __init__(self, extractor: nn.Module, mean, std):
        super().__init__()
        self.extractor = extractor.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    @torch.no_grad()
    def forward(self, x_uint8: torch.Tensor) -> torch.Tensor:
        return self.extractor((x_uint8.float() / 255.0 - self.mean) / self.std)

    def of(self, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        """Features of many images, on the CPU."""
        device = self.mean.device
        return torch.cat([self(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)])


class _Precomputed(nn.Module):
    """Hands torchmetrics features computed once (FID/KID then skip their own extractor)."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def subsample(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """``n`` rows of ``x`` drawn without replacement by a seeded permutation; ``x`` itself when it
    has no more than ``n`` rows."""
    if len(x) <= n:
        return x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def equal_sizes(real: torch.Tensor, fake: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets cut to the smaller one's size (:func:`subsample` of the larger)."""
    n = min(len(real), len(fake))
    return subsample(real, n, seed), subsample(fake, n, seed)


def fid_kid(real: torch.Tensor, fake: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """Fréchet distance and KID (torchmetrics) between two sets of feature vectors (rows = images),
    at equal sizes: the larger set is subsampled (``seed``) to the smaller one's size, since the
    Fréchet distance's bias depends on both sizes. KID's mean and spread are over 50 random
    subsets of half the set (at most 1,000 images): subsets as large as the set would all be the
    set itself, with a spread of zero."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    real, fake = equal_sizes(real, fake, seed)
    torch.manual_seed(seed)  # KID draws random subsets
    identity = _Precomputed(real.shape[1])
    fid = FrechetInceptionDistance(feature=identity, reset_real_features=True)
    kid = KernelInceptionDistance(feature=identity, subsets=50, subset_size=kid_subset_size(len(real)))
    for metric in (fid, kid):
        metric.update(real.double(), real=True)
        metric.update(fake.double(), real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}


def kid_subset_size(n: int) -> int:
    """KID's subset size for sets of ``n`` images: half of them (at least 2, at most 1,000)."""
    return max(2, min(1000, n // 2))


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, seed: int = 0) -> tuple[float, float]:
    """k-NN manifold precision and recall (Kynkäänniemi et al. 2019), at equal sizes as there
    (the larger set is subsampled, ``seed``): a manifold estimated from more points is denser.

    Precision: share of fake samples inside the real manifold (within some real sample's
    k-NN radius); recall: share of real samples inside the fake manifold.
    """

    def radii(x: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(x, x)
        return d.kthvalue(k + 1, dim=1).values  # +1: the zero distance to itself

    def inside(points: torch.Tensor, ref: torch.Tensor, ref_radii: torch.Tensor) -> float:
        return float((torch.cdist(points, ref) <= ref_radii[None, :]).any(dim=1).float().mean())

    real, fake = equal_sizes(real.float(), fake.float(), seed)
    return inside(fake, real, radii(real)), inside(real, fake, radii(fake))


REFERENCE_DRAWS = 5  # real-vs-real draws: the reference's mean and its spread (the measures' own noise)


def set_quality(real: torch.Tensor, fake: torch.Tensor, k: int, seed: int, draws: int = REFERENCE_DRAWS) -> dict:
    """Generated vs real at one size ``n`` (the smaller set's), and the real-vs-real reference:
    FD, KID and precision/recall of two disjoint real subsets of that size (what a generator
    that samples the real distribution would get), or of the largest equal size that fits in
    the real set, over ``draws`` seeded draws of the two subsets: each measure's mean and
    standard deviation (``<measure>_sd``), so a reader sees the measure's own noise. The generated
    images are compared with the first draw's first subset."""
    n = min(len(real), len(fake))
    order = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    real_n, fake_n = real[order[:n]], subsample(fake, n, seed)
    m = min(n, len(real) // 2)

    def measures(a: torch.Tensor, b: torch.Tensor) -> dict:
        if min(len(a), len(b)) <= k:  # k-NN radii need more than k images a side (a small dataset of one's own)
            log.warning("%d images a side, too few for k-NN precision/recall with k=%d; left empty", len(a), k)
            precision, recall = None, None
        else:
            precision, recall = precision_recall(a, b, k)
        if min(len(a), len(b)) < 2:  # a covariance needs two images a side
            log.warning("%d image(s) a side, too few for FD/KID; left empty", min(len(a), len(b)))
            distances = {"fid": None, "kid": None, "kid_std": None}
        else:
            distances = fid_kid(a, b, seed)
        return {"n": len(a), **distances, "precision": precision, "recall": recall}

    references = []
    for draw in range(draws):
        split = order if draw == 0 else torch.randperm(len(real), generator=torch.Generator().manual_seed(seed + draw))
        references.append(measures(real[split[:m]], real[split[m : 2 * m]]))
    return {**measures(real_n, fake_n), "reference": _mean_and_sd(references)}


def _mean_and_sd(rows: list[dict]) -> dict:
    """Per measure, the mean over ``rows`` and (``<measure>_sd``) the standard deviation; None stays None."""
    import statistics

    out = {"n": rows[0]["n"], "draws": len(rows)}
    for key in ("fid", "kid", "kid_std", "precision", "recall"):
        values = [row[key] for row in rows]
        if any(v is None for v in values):
            out[key], out[f"{key}_sd"] = None, None
        else:
            out[key] = float(statistics.fmean(values))
            out[f"{key}_sd"] = float(statistics.stdev(values)) if len(values) > 1 else 0.0
    return out


def synthetic_quality(
    real: torch.Tensor,
    real_y: torch.Tensor,
    fake: torch.Tensor,
    fake_y: torch.Tensor,
    class_names: list[str],
    k: int,
    seed: int,
) -> dict:
    """:func:`set_quality` of all classes together and of each class (features and labels of the
    real and the generated images): ``{"overall": ..., "per_class": {name: ...}}``."""
    return {
        "overall": set_quality(real, fake, k, seed),
        "per_class": {
            name: set_quality(real[real_y == c], fake[fake_y == c], k, seed) for c, name in enumerate(class_names)
        },
    }
