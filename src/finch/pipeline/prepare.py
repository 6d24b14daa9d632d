"""Stage `prepare`: sample and check the target and source tasks."""

from __future__ import annotations

import logging

from finch.config import FinchConfig
from finch.pipeline.paths import PREPARED

log = logging.getLogger(__name__)


def run(cfg: FinchConfig) -> None:
    from finch.data.prepare import check_scarce_size
    from finch.data.prepare import prepare as prepare_data

    check_scarce_size(cfg.data, cfg.synthetic.real_per_class)  # before any image is decoded
    card = prepare_data(cfg.data, PREPARED)
    counts = {s: sum(c.values()) for s, c in card["target"]["counts"].items()}
    log.info("target task %s: %s", card["target"]["classes"], counts)
    if card["skipped_images"]:
        log.warning("skipped %d unreadable image(s); listed in %s", len(card["skipped_images"]), PREPARED / "card.json")
