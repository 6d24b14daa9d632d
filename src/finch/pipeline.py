"""What each DVC stage does, as library functions; ``stages/*.py`` only call these.

Heavy imports stay inside the functions so a stage pays only for what it uses.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

from finch.config import FinchConfig, load_params
from finch.errors import USER_ERRORS, ConfigError

log = logging.getLogger("finch")

PREPARED = Path("data/prepared")
MODELS = Path("models")
RUNS = Path("reports/runs")
REPORTS = Path("reports")
BACKBONE = MODELS / "pretrain" / "backbone.safetensors"


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare(cfg: FinchConfig) -> None:
    from finch.data.prepare import prepare as prepare_data

    card = prepare_data(cfg.data, PREPARED)
    counts = {s: sum(c.values()) for s, c in card["target"]["counts"].items()}
    log.info("target task %s: %s", card["target"]["classes"], counts)
    if card["skipped_images"]:
        log.warning("skipped %d unreadable image(s); listed in %s", len(card["skipped_images"]), PREPARED / "card.json")


def pretrain(cfg: FinchConfig) -> None:
    """Train the backbone on the source classes, or take timm's ImageNet weights."""
    from finch.data.splits import load_task
    from finch.io import load_tensors, write_json
    from finch.models import build_model, save_backbone
    from finch.study import Variant, train_variant
    from finch.tracking import log_runs_safely
    from finch.train.runtime import configure

    device = configure(cfg.runtime)
    target = load_task(PREPARED, "target")
    pc = cfg.pretrain
    if pc.weights == "timm":
        try:
            model = build_model(pc.model, target.num_classes, target.in_chans, pretrained=True)
        except Exception as err:
            raise ConfigError(
                f"pretrain.weights is timm but timm's weights for {pc.model.name!r} could not be "
                f"loaded ({err}); they need network access or a filled Hugging Face cache"
            ) from None
        save_backbone(model, BACKBONE, {"origin": f"timm:{pc.model.name}"})
        # no training run to record; the declared output folder says where the weights came from
        write_json(RUNS / "pretrain" / "origin.json", {"weights": f"timm:{pc.model.name}"})
        return
    source = load_task(PREPARED, "source")
    variant = Variant(
        stage="pretrain",
        name="source",
        build_model=lambda: build_model(pc.model, source.num_classes, source.in_chans),
        recipe=pc.recipe,
        settings={"model": pc.model.model_dump(), "recipe": pc.recipe.model_dump()},
    )
    folders = train_variant(variant, source, [pc.seed], cfg, device, RUNS, MODELS / "pretrain")
    model = build_model(pc.model, source.num_classes, source.in_chans)
    model.load_state_dict(load_tensors(MODELS / "pretrain" / "source" / f"seed={pc.seed}.safetensors"))
    save_backbone(model, BACKBONE, {"origin": "source classes", "source_classes": ",".join(source.class_names)})
    log_runs_safely(folders, cfg.tracking, cfg.profile)


def train_teacher(cfg: FinchConfig) -> None:
    """Fine-tune the CNN teacher from the pretrained backbone, once per seed."""
    from finch.data.splits import load_task
    from finch.models import build_model, load_backbone
    from finch.study import Variant, train_variant
    from finch.tracking import log_runs_safely
    from finch.train.runtime import configure

    device = configure(cfg.runtime)
    data = load_task(PREPARED, "target")
    tc = cfg.teacher

    def build():
        model = build_model(tc.model, data.num_classes, data.in_chans)
        load_backbone(model, BACKBONE)
        return model

    variant = Variant(
        stage="teacher",
        name="default",
        build_model=build,
        recipe=tc.recipe,
        settings={
            "model": tc.model.model_dump(),
            "recipe": tc.recipe.model_dump(),
            "backbone_hash": file_hash(BACKBONE),
        },
    )
    folders = train_variant(variant, data, cfg.seeds, cfg, device, RUNS, MODELS / "teacher")
    log_runs_safely(folders, cfg.tracking, cfg.profile)


def teacher_weights(seed: int) -> Path:
    return MODELS / "teacher" / "default" / f"seed={seed}.safetensors"


def train_student(cfg: FinchConfig) -> None:
    """The distilled ViT student: every variant in student.variants, once per seed."""
    from finch.data.splits import load_task
    from finch.distill import DistillationObjective, build_student, load_teacher
    from finch.study import Variant, train_variant
    from finch.tracking import log_runs_safely
    from finch.train.runtime import configure

    device = configure(cfg.runtime)
    data = load_task(PREPARED, "target")
    sc = cfg.student
    recipe = sc.recipe
    mixing = recipe.augment.mixup_alpha > 0 or recipe.augment.cutmix_alpha > 0
    folders = []
    for name in sc.variants:

        def objective(data, seed, name=name):
            teacher = None
            if name != "none":
                teacher = load_teacher(
                    cfg.teacher.model, teacher_weights(seed), data.num_classes, data.in_chans, device
                )
            return DistillationObjective(recipe.loss, data.num_classes, mixing, name, sc, teacher)

        settings = {"student": sc.model_dump(exclude={"variants"}), "variant": name}
        if name != "none":  # the teacher of each seed is part of what defines the run
            settings["teacher"] = {str(s): file_hash(teacher_weights(s)) for s in cfg.seeds}
        variant = Variant(
            stage="student",
            name=name,
            recipe=recipe,
            settings=settings,
            objective=objective,
            build_model=lambda name=name: build_student(sc, name, data.num_classes, data.in_chans),
        )
        folders += train_variant(variant, data, cfg.seeds, cfg, device, RUNS, MODELS / "student")
    log_runs_safely(folders, cfg.tracking, cfg.profile)


def aggregate(cfg: FinchConfig) -> None:
    """Tables, intervals and figures from every run record; then sync MLflow."""
    from finch.report.results import write_reports
    from finch.runs import find_records

    records = find_records(RUNS)
    if not records:
        raise ConfigError(f"{RUNS}: no run records; run the training stages first (dvc repro)")
    summary = write_reports(records, PREPARED / "card.json", REPORTS, cfg.aggregate)
    log.info("wrote %s (%d runs)", REPORTS / "results.md", len(records))
    if cfg.tracking.enabled:
        sync_mlflow(cfg, records, summary)


def sync_mlflow(cfg: FinchConfig, records=None, summary=None) -> None:
    """Log to MLflow every run (and summary) that is not there yet; warn if unreachable."""
    from finch.runs import find_records
    from finch.tracking import sync, tracking_uri

    records = records if records is not None else find_records(RUNS)
    summaries = []
    if summary is not None:
        for (stage, variant), rows in summary.groupby(["stage", "variant"]):
            keys = [r.key for r in records if r.data["stage"] == stage and r.data["variant"] == variant]
            summaries.append({"stage": stage, "variant": variant, "rows": rows.to_dict("records"), "member_keys": keys})
    try:
        counts = sync(records, cfg.tracking, cfg.profile, summaries)
    except Exception as err:
        log.warning(
            "MLflow sync failed (%s: %s); run `finch sync` once %s is reachable",
            type(err).__name__,
            err,
            tracking_uri(cfg.tracking),
        )
        return
    log.info("MLflow %s: %s", tracking_uri(cfg.tracking), counts)


def run_stage(
    name: str, fn: Callable[[FinchConfig], None], imports: tuple[str, ...] = (), params: str = "params.yaml"
) -> None:
    """Entry point of a stage process: logging, params, clean errors, timing.

    ``imports`` are the heavy modules the stage uses, imported first so that the
    start-up time written to ``reports/timing/<stage>.json`` includes them.
    """
    import importlib

    from finch.io import write_json

    for module in imports:
        importlib.import_module(module)

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.time()
    startup_s = _seconds_since_process_start()
    try:
        cfg = load_params(params)
        fn(cfg)
    except USER_ERRORS as err:
        print(f"\nfinch {name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    write_json(
        REPORTS / "timing" / f"{name}.json",
        {
            "stage": name,
            "startup_s": round(startup_s, 3),
            "wall_s": round(startup_s + time.time() - started, 3),
        },
    )


def _seconds_since_process_start() -> float:
    """Interpreter start plus imports so far (the cost every stage process pays)."""
    import psutil

    return time.time() - psutil.Process().create_time()
