"""Stage `extract_features`: the pretrained backbones once over the target splits."""

from __future__ import annotations

import logging

from finch.config import FinchConfig
from finch.pipeline.paths import BACKBONE, FEATURES, PREPARED, VIT_BACKBONE, file_hash

log = logging.getLogger(__name__)


def run(cfg: FinchConfig) -> None:
    """Run each pretrained backbone once over the target splits; cache the pooled features."""
    from finch.data.splits import load_task
    from finch.io import save_tensors
    from finch.train.runtime import configure
    from finch.transfer import extract_features as extract
    from finch.transfer import feature_extractor

    device = configure(cfg.runtime)
    data = load_task(PREPARED, "target")
    for kind, model_cfg, weights in (
        ("cnn", cfg.pretrain.model, BACKBONE),
        ("vit", cfg.pretrain.vit_model, VIT_BACKBONE),
    ):
        features = extract(feature_extractor(model_cfg, weights, data.in_chans), data, device)
        meta = {"backbone": str(weights), "backbone_hash": file_hash(weights), "data_hash": data.content_hash}
        save_tensors(FEATURES / f"{kind}.safetensors", features, meta)
        log.info(
            "%s features: %s per image for %d images",
            kind,
            tuple(features["train_x"].shape[1:]),
            sum(len(features[f"{s}_y"]) for s in ("train", "val", "test")),
        )
