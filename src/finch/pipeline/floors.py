"""Stage `floors`: what raw pixels alone get on the target task (the floor of every study)."""

from __future__ import annotations

import logging

from finch.config import FinchConfig
from finch.pipeline.paths import PREPARED, REPORTS

log = logging.getLogger(__name__)

FLOORS_JSON = REPORTS / "floors.json"
SCARCE_STAGES = ("augmented",)  # the studies trained on synthetic.real_per_class images a class


def run(cfg: FinchConfig) -> None:
    """Pixel logistic regression and k-NN on the prepared splits → reports/floors.json."""
    from finch.data.splits import first_per_class, load_task
    from finch.floors import floor_metrics
    from finch.io import write_json

    data = load_task(PREPARED, "target")
    floors = floor_metrics(data, cfg.evaluate.ece_bins)
    out = {"data_hash": data.content_hash, "floors": floors}
    scarce = cfg.synthetic.real_per_class
    if scarce is not None:  # the GAN study's own floors: the same classifiers on its scarce training images
        out["scarce"] = {
            "per_class": scarce,
            "stages": list(SCARCE_STAGES),
            "floors": floor_metrics(first_per_class(data, scarce), cfg.evaluate.ece_bins),
        }
    write_json(FLOORS_JSON, out)
    for name, floor in floors.items():
        log.info(
            "floor %s (%s = %s): test accuracy %.4f", name, floor["param"], floor["value"], floor["metrics"]["accuracy"]
        )
    for name, floor in out.get("scarce", {}).get("floors", {}).items():
        log.info("floor %s on %d images a class: test accuracy %.4f", name, scarce, floor["metrics"]["accuracy"])
