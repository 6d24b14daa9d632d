"""``model`` sections: a timm model and its arguments, and how a ViT's input size follows the data."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from finch.config.base import Strict


class TokenizerConfig(Strict):
    """A convolutional tokenizer for a ViT (CCT, Hassani et al. 2021): conv–ReLU–max-pool blocks,
    each halving the side, whose map's every position is a token, in place of the patch embedding."""

    channels: list[int] = Field(default_factory=lambda: [64, 96], min_length=1, description="each block's width")
    kernel_size: int = Field(3, ge=1, description="the convolutions' kernel (odd: the side is kept)")

    @field_validator("channels")
    @classmethod
    def _positive(cls, channels: list[int]) -> list[int]:
        if any(c < 1 for c in channels):
            raise ValueError(f"channels {channels}: every width must be at least 1")
        return channels


class ModelConfig(Strict):
    name: str = Field("resnet18", description="a timm model name")
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="extra timm.create_model arguments; null = unset (timm's default), which lets a profile "
        "unset a kwarg it inherits",
    )
    small_input_stem: bool = Field(False, description="drop the stem's max-pool (for 28-64 px images)")
    drop_rate: float | None = Field(None, ge=0.0, lt=1.0, description="dropout before the classifier; null = timm's")
    drop_path_rate: float | None = Field(None, ge=0.0, lt=1.0, description="stochastic depth; null = timm's")
    attn_drop_rate: float | None = Field(None, ge=0.0, lt=1.0, description="ViT attention dropout; null = timm's")
    tokenizer: TokenizerConfig | None = Field(
        None, description="ViTs: a convolutional tokenizer in place of the patch embedding; null = patches"
    )

    @field_validator("kwargs")
    @classmethod
    def _drop_unset(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in kwargs.items() if v is not None}

    def timm_kwargs(self) -> dict[str, Any]:
        """``kwargs`` plus the regularisation rates that are set."""
        rates = {k: getattr(self, k) for k in ("drop_rate", "drop_path_rate", "attn_drop_rate")}
        return {**self.kwargs, **{k: v for k, v in rates.items() if v is not None}}

    def fitted_to(self, image_size: int, key: str) -> ModelConfig:
        """This ViT with ``img_size`` and ``patch_size`` filled in where its kwargs leave them unset:
        ``img_size`` = ``image_size``, ``patch_size`` = :func:`vit_patch_size` of it. ``key`` (e.g.
        ``student.model``) names the setting in errors: an ``img_size`` the data does not have, or a
        ``patch_size`` that does not divide it, fails here, before any work."""
        kwargs = dict(self.kwargs)
        size = kwargs.setdefault("img_size", image_size)
        if self.tokenizer is not None:  # every position of the tokenizer's map is a token: patches of 1
            blocks = len(self.tokenizer.channels)
            side = size
            for _ in range(blocks):
                side = (side + 1) // 2
            if side < MIN_TOKENS_PER_SIDE:
                raise ValueError(
                    f"{key}.tokenizer: {blocks} blocks halve {size} px to {side} token(s) a side (fewer than "
                    f"{MIN_TOKENS_PER_SIDE}); list fewer {key}.tokenizer.channels"
                )
            kwargs.setdefault("patch_size", 1)
            if kwargs["patch_size"] != 1:
                raise ValueError(
                    f"{key}.kwargs.patch_size must be 1 (or null) with a tokenizer, not {kwargs['patch_size']}"
                )
            return self.model_copy(update={"kwargs": kwargs})
        if size != image_size and not kwargs.get("dynamic_img_size"):
            raise ValueError(
                f"{key}.kwargs.img_size is {size} but data.image_size is {image_size}: the ViT would reject "
                f"every image. Set {key}.kwargs.img_size to {image_size} (with a patch_size that divides it), "
                f"or to null, and it follows data.image_size"
            )
        if kwargs.get("patch_size") is None:
            patch = vit_patch_size(size)
            if patch is None:
                raise ValueError(
                    f"{key}: no patch size from 2 to 16 divides {key}.kwargs.img_size {size} into at least "
                    f"{MIN_PATCHES_PER_SIDE} patches per side; set {key}.kwargs.patch_size, or use an "
                    f"image size with such a divisor (data.image_size: 28, 32, 64, 224, ...)"
                )
            kwargs["patch_size"] = patch
        elif not isinstance(kwargs["patch_size"], int) or size % kwargs["patch_size"]:
            raise ValueError(
                f"{key}.kwargs.patch_size {kwargs['patch_size']!r} does not divide img_size {size}: the border "
                f"pixels would be dropped. Set it to a divisor of {size} "
                f"(e.g. {vit_patch_size(size) or 'another image size'}), or to null and Finch picks one"
            )
        return self.model_copy(update={"kwargs": kwargs})


# ViT input sizes: see ModelConfig.fitted_to and the README's "Your own dataset".
MAX_AUTO_PATCH = 16  # the patch of timm's *_patch16_* ViTs
MIN_PATCHES_PER_SIDE = 4
MIN_TOKENS_PER_SIDE = 2  # a tokenizer's map: small images (16 px) still get 2 x 2 tokens from the default's 3 blocks


def vit_patch_size(image_size: int) -> int | None:
    """The patch size Finch picks for a ViT on ``image_size`` px images when none is set: the
    largest divisor of ``image_size`` up to 16 (timm's ``*_patch16_*``) that leaves at least 4
    patches per side (28 → 7, 32 → 8, 48 → 12, 64 → 16, 224 → 16); None if no divisor ≥ 2 does."""
    for patch in range(min(MAX_AUTO_PATCH, image_size // MIN_PATCHES_PER_SIDE), 1, -1):
        if image_size % patch == 0:
            return patch
    return None
