"""Stage `explain`: where the teacher and a student look (Grad-CAM), logged to MLflow.

Each model's parameter summary is in its run record (written by the stage that trains it);
the aggregate writes them to reports/models/."""

from __future__ import annotations

import logging
from pathlib import Path

from finch.config import FinchConfig
from finch.errors import ConfigError, ModelError
from finch.pipeline.paths import MODELS, PREPARED, REPORTS, teacher_weights

log = logging.getLogger(__name__)

EXPLANATIONS = REPORTS / "explanations.png"


def student_weights(variant: str, seed: int) -> Path:
    return MODELS / "student" / variant / f"seed={seed}.safetensors"


def run(cfg: FinchConfig) -> None:
    """Grad-CAM figure of the teacher and student of one seed, and one MLflow run holding it."""
    from finch.data.splits import load_task
    from finch.distill import build_student, load_teacher
    from finch.explain import cnn_cam, explanation_figure, fixed_images, vit_cam
    from finch.io import load_tensors
    from finch.train.runtime import configure

    device = configure(cfg.runtime)
    data = load_task(PREPARED, "target")
    ec = cfg.explain
    seed = ec.seed if ec.seed is not None else cfg.seeds[0]
    if seed not in cfg.seeds:
        raise ConfigError(f"explain.seed {seed} is not in seeds {cfg.seeds}: no models were trained for it")
    variant = ec.student_variant
    if variant not in cfg.student.variants:
        raise ConfigError(
            f"explain.student_variant {variant!r} is not trained (student.variants: {cfg.student.variants}); "
            "name one of those"
        )

    teacher = load_teacher(cfg.teacher.model, teacher_weights(seed), data.num_classes, data.in_chans, device)
    student = build_student(cfg.student, variant, data.num_classes, data.in_chans)
    weights = student_weights(variant, seed)
    try:
        student.load_state_dict(load_tensors(weights))
    except RuntimeError as err:  # missing / unexpected keys or shapes
        raise ModelError(
            f"{weights}: does not fit the student built from student.model ({err}); re-run train_student"
        ) from None
    student.to(device).eval()

    chosen = fixed_images(data.test.y, ec.images_per_class)
    images, labels = data.test.x[chosen], data.test.y[chosen]
    inputs = data.to_inputs(images, device)
    teacher_map, student_map = cnn_cam(teacher, inputs), vit_cam(student, inputs)
    explanation_figure(
        images,
        labels,
        data.class_names,
        [("teacher", teacher_map), (f"student ({variant})", student_map)],
        EXPLANATIONS,
        title=f"Grad-CAM of the predicted class, seed {seed}: the first {ec.images_per_class} test image(s) per class",
    )
    agree = float((teacher_map.predictions == student_map.predictions).mean())
    log.info(
        "explain: %d test images, teacher at %s, student (%s) at %s, predictions agree on %.0f%%; wrote %s",
        len(chosen),
        teacher_map.layer,
        variant,
        student_map.layer,
        100 * agree,
        EXPLANATIONS,
    )

    params = {
        "explain.seed": seed,
        "explain.student_variant": variant,
        "explain.images_per_class": ec.images_per_class,
        "explain.teacher_layer": teacher_map.layer,
        "explain.student_layer": student_map.layer,
    }
    log_explanations_safely(cfg, EXPLANATIONS, params)


def log_explanations_safely(cfg: FinchConfig, figure: Path, params: dict) -> None:
    """The figure and ``params`` as one MLflow run (:meth:`finch.tracking.Tracker.log_files_once`:
    logged once, a re-run with the same figure logs nothing); a failure only warns, the figure is
    already written."""
    from finch.tracking import Tracker, shown_uri

    if not cfg.tracking.enabled:
        return
    try:
        run_id = Tracker(cfg.tracking, cfg.profile).log_files_once("explain", params, [figure])
    except Exception as err:  # tracking must never cost the stage's outputs
        log.warning(
            "MLflow logging of the explanations failed (%s: %s); %s is written; "
            "`dvc repro --force explain` logs it when the store is reachable",
            type(err).__name__,
            err,
            figure,
        )
        return
    if run_id is None:
        log.info("MLflow: these explanations are already logged")
    else:
        log.info("MLflow: logged the explanations (run %s) to %s", run_id, shown_uri(cfg.tracking))
