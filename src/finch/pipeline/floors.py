"""Stage `floors`: what raw pixels alone get on the target task (the floor of every study)."""

from __future__ import annotations

from finch.config import FinchConfig
from finch.pipeline.common import PREPARED, REPORTS, log

FLOORS_JSON = REPORTS / "floors.json"


def compute_floors(cfg: FinchConfig) -> None:
    """Pixel logistic regression and k-NN on the prepared splits → reports/floors.json."""
    from finch.data.splits import load_task
    from finch.floors import floor_metrics
    from finch.io import write_json

    data = load_task(PREPARED, "target")
    floors = floor_metrics(data, cfg.evaluate.ece_bins)
    write_json(FLOORS_JSON, {"data_hash": data.content_hash, "floors": floors})
    for name, floor in floors.items():
        log.info(
            "floor %s (%s = %s): test accuracy %.4f", name, floor["param"], floor["value"], floor["metrics"]["accuracy"]
        )
