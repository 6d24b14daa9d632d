"""Where the models look: Grad-CAM maps for the CNN teacher and the ViT student, and a figure.

Both maps come from pytorch-grad-cam's ``GradCAM`` (Selvaraju et al. 2017): the target
layer's activations weighted by the spatially averaged gradient of the explained class's
logit, ReLU, scaled to [0, 1] per image and resized (bilinear) to the image's (H, W).

- CNN: the deepest feature stage (timm's ``feature_info``) whose map is still at least
  ``min_size`` pixels on a side. On 28 px images a ResNet's last stage is 1x1, where every
  Grad-CAM map is constant; the stage before it is the usual compromise.
- ViT: the last block's ``norm1`` output, with the prefix tokens (class and distillation
  token: ``num_prefix_tokens``) dropped and the patch tokens reshaped to the patch grid.
  The heads read only the prefix tokens, whose last attention reads these patch tokens, so
  the gradient reaching them is the class evidence per patch. A two-head student is
  explained through the prediction it reports: the average of its two heads (DeiT).

Grad-CAM was chosen over attention rollout for the ViT because it is class-specific (same
question as for the CNN, so the two columns of the figure are comparable) and needs only a
forward hook; rollout needs the attention matrices, which timm's fused attention never
materialises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from finch.errors import ModelError

MIN_CAM_SIZE = 4
MAX_FIGURE_ROWS = 48  # a 200-class task would otherwise draw thousands of rows


@dataclass(frozen=True)
class Explanation:
    """Grad-CAM maps ``[N, H, W]`` in [0, 1], the explained classes and the predictions."""

    maps: np.ndarray
    targets: np.ndarray
    predictions: np.ndarray
    layer: str


class ReportedLogits(nn.Module):
    """One logits tensor per batch: a two-head student's heads averaged, as it is evaluated."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return 0.5 * (out[0] + out[1]) if isinstance(out, tuple) else out


@contextmanager
def inspection_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients for a while; both restored afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def grad_cam(
    model: nn.Module,
    layer: str,
    inputs: torch.Tensor,
    targets: torch.Tensor | None = None,
    reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Explanation:
    """Grad-CAM of ``model`` at its submodule ``layer`` for standardised ``inputs`` ``[N, C, H, W]``.

    ``targets``: the class explained per image; ``None`` = the model's prediction. The model's
    mode and ``requires_grad`` flags are left as they were; the gradient flows from the
    input instead, so frozen models (a loaded teacher) work too.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    wrapped = ReportedLogits(model)
    target_layer = model.get_submodule(layer)
    with inspection_mode(model):
        with torch.no_grad():
            predictions = wrapped(inputs).argmax(dim=-1).cpu()
        explained = predictions if targets is None else targets.cpu()
        cam = GradCAM(model=wrapped, target_layers=[target_layer], reshape_transform=reshape_transform)
        try:  # not `with cam`: its __exit__ swallows IndexError
            maps = cam(
                input_tensor=inputs.detach().clone().requires_grad_(True),
                targets=[ClassifierOutputTarget(int(c)) for c in explained],
            )
        finally:
            cam.activations_and_grads.release()
    return Explanation(
        maps=np.clip(np.asarray(maps, dtype=np.float32), 0.0, 1.0),
        targets=explained.numpy(),
        predictions=predictions.numpy(),
        layer=layer,
    )


# ------------------------------------------------------------------------ CNN
def cnn_target_layer(model: nn.Module, inputs: torch.Tensor, min_size: int = MIN_CAM_SIZE) -> str:
    """The deepest feature stage whose output is at least ``min_size`` on both sides.

    Candidates are timm's ``feature_info`` modules (stem, layer1..layer4 for a ResNet), else
    every Conv2d; with none large enough, the first (largest) candidate.
    """
    infos = getattr(model, "feature_info", None)
    names = [info["module"] for info in infos] if infos else []
    if not names:
        names = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not names:
        raise ModelError(f"{type(model).__name__} has no convolution to explain with Grad-CAM")
    sizes: dict[str, tuple[int, ...]] = {}

    def record(name: str):
        def hook(_module, _inputs, output) -> None:  # returns None: the output stays as it is
            sizes[name] = tuple(output.shape[-2:])

        return hook

    hooks = [model.get_submodule(name).register_forward_hook(record(name)) for name in names]
    try:
        with inspection_mode(model), torch.no_grad():
            model(inputs[:1])
    finally:
        for hook in hooks:
            hook.remove()
    large = [name for name in names if name in sizes and min(sizes[name]) >= min_size]
    return large[-1] if large else names[0]


def cnn_cam(model: nn.Module, inputs: torch.Tensor, min_size: int = MIN_CAM_SIZE) -> Explanation:
    """Grad-CAM of a CNN (e.g. the timm ResNet teacher) for its predicted classes."""
    return grad_cam(model, cnn_target_layer(model, inputs, min_size), inputs)


# ------------------------------------------------------------------------ ViT
def vit_of(model: nn.Module) -> nn.Module:
    """The timm VisionTransformer inside a student (``TwoHeadStudent.vit``) or the model itself."""
    vit = getattr(model, "vit", model)
    if not (hasattr(vit, "blocks") and hasattr(vit, "patch_embed") and hasattr(vit, "num_prefix_tokens")):
        raise ModelError(f"{type(vit).__name__} is not a timm VisionTransformer (blocks, patch_embed)")
    return vit


def patch_grid_transform(vit: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Tokens ``[N, prefix + h*w, D]`` → patch maps ``[N, D, h, w]`` (prefix tokens dropped)."""
    prefix = int(vit.num_prefix_tokens)
    grid_h, grid_w = (int(s) for s in vit.patch_embed.grid_size)

    def to_grid(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:, :]
        if patches.shape[1] != grid_h * grid_w:
            raise ModelError(
                f"ViT has {patches.shape[1]} patch tokens after {prefix} prefix token(s), "
                f"expected a {grid_h}x{grid_w} grid; images must have the model's img_size"
            )
        return patches.reshape(len(tokens), grid_h, grid_w, -1).permute(0, 3, 1, 2)

    return to_grid


def vit_cam(model: nn.Module, inputs: torch.Tensor) -> Explanation:
    """Grad-CAM of a timm ViT or two-head student at its last block, for its predicted classes."""
    vit = vit_of(model)
    prefix = "vit." if vit is not model else ""
    layer = f"{prefix}blocks.{len(vit.blocks) - 1}.norm1"
    return grad_cam(model, layer, inputs, reshape_transform=patch_grid_transform(vit))


# ------------------------------------------------------------------------ figure
def fixed_images(labels: torch.Tensor, per_class: int, max_rows: int = MAX_FIGURE_ROWS) -> list[int]:
    """Indices of the first ``per_class`` images of each class, class by class.

    Deterministic (by index, no sampling). Classes beyond ``max_rows // per_class`` are left
    out so the figure stays readable.
    """
    labels = torch.as_tensor(labels)
    classes = int(labels.max()) + 1 if len(labels) else 0
    keep = max(1, max_rows // per_class)
    chosen: list[int] = []
    for c in range(min(classes, keep)):
        chosen += torch.nonzero(labels == c).flatten()[:per_class].tolist()
    return chosen


def _display(image: torch.Tensor) -> tuple[np.ndarray, str | None]:
    """A uint8 ``[C, H, W]`` image as matplotlib wants it, with its colormap."""
    array = image.detach().cpu().numpy()
    if array.shape[0] == 1:
        return array[0], "gray"
    return np.transpose(array, (1, 2, 0)), None


def explanation_figure(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    columns: list[tuple[str, Explanation]],
    path: Path | str,
    title: str = "",
) -> None:
    """Rows = images; columns = the image, then each explanation's map over it.

    ``images``: uint8 ``[N, C, H, W]``; ``labels``: true classes; ``columns``: (model name,
    explanation of the same N images). Under each map: that model's prediction (green when
    right, red when wrong); each column is headed by the model and its Grad-CAM layer.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from finch.io import write_with

    n, n_cols = len(images), 1 + len(columns)
    for name, expl in columns:
        if expl.maps.shape[0] != n:
            raise ValueError(f"{name}: {expl.maps.shape[0]} maps for {n} images")
    fig, axes = plt.subplots(n, n_cols, figsize=(2.2 * n_cols, 2.3 * n + 0.6), squeeze=False, layout="constrained")
    headings = ["image", *(f"{name}\nGrad-CAM at {expl.layer}" for name, expl in columns)]
    for col, heading in enumerate(headings):
        axes[0, col].set_title(heading, fontsize=9)
    for row in range(n):
        pixels, cmap = _display(images[row])
        truth = int(labels[row])
        axes[row, 0].imshow(pixels, cmap=cmap, interpolation="nearest")
        axes[row, 0].set_xlabel(f"true: {class_names[truth]}", fontsize=8)
        for col, (name, expl) in enumerate(columns, start=1):
            ax = axes[row, col]
            ax.imshow(pixels, cmap=cmap, interpolation="nearest")
            ax.imshow(expl.maps[row], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0, interpolation="bilinear")
            pred = int(expl.predictions[row])
            color = "tab:green" if pred == truth else "tab:red"
            ax.set_xlabel(f"{name}: {class_names[pred]}", fontsize=8, color=color)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title or "Grad-CAM of the predicted class (red: more evidence)", fontsize=10)
    write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
