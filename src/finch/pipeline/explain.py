"""Stage `explain`: where the teacher and a student look (Grad-CAM), and every model's size."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from finch.config import FinchConfig
from finch.errors import ConfigError, ModelError
from finch.pipeline.paths import MODELS, PREPARED, REPORTS, teacher_weights

log = logging.getLogger(__name__)

EXPLANATIONS = REPORTS / "explanations.png"
MODEL_SUMMARIES = REPORTS / "models"
SUMMARY_DEPTH = 2


def student_weights(variant: str, seed: int) -> Path:
    return MODELS / "student" / variant / f"seed={seed}.safetensors"


def run(cfg: FinchConfig) -> None:
    """Grad-CAM figure of the teacher and student of one seed, model summaries, one MLflow run."""
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

    summaries = model_summaries(cfg, data)
    write_summaries(summaries, MODEL_SUMMARIES)
    log.info("explain: parameter summaries of %d models in %s", len(summaries), MODEL_SUMMARIES)
    params = {
        "explain.seed": seed,
        "explain.student_variant": variant,
        "explain.images_per_class": ec.images_per_class,
        "explain.teacher_layer": teacher_map.layer,
        "explain.student_layer": student_map.layer,
    }
    log_explanations_safely(cfg, EXPLANATIONS, MODEL_SUMMARIES, params)


# ------------------------------------------------------------------------ model summaries
def model_summaries(cfg: FinchConfig, data) -> dict[str, tuple[str, dict]]:
    """name → (what it is, :func:`finch.model_summary.summarize`) for every model the study trains.

    Built fresh (no weights needed) with the freezing each stage applies, so ``trainable`` is
    what that stage trains.
    """
    from finch.distill import DISTILLED, build_student
    from finch.gan import Discriminator, Generator
    from finch.io import read_json
    from finch.model_summary import summarize
    from finch.models import build_model
    from finch.transfer import STRATEGIES

    nc, chans = data.num_classes, data.in_chans
    source = read_json(PREPARED / "card.json").get("source_task")
    pretrain_classes = len(source["classes"]) if cfg.pretrain.weights == "source" and source else nc
    models: dict = {
        "teacher": (
            "The CNN teacher (train_teacher; train_augmented trains the same network).",
            build_model(cfg.teacher.model, nc, chans),
        ),
    }
    variants = cfg.student.variants
    distilled = [v for v in variants if v in DISTILLED]
    if distilled:
        models["student"] = (
            f"The distilled ViT student, class and distillation token (variants {', '.join(distilled)}).",
            build_student(cfg.student, distilled[0], nc, chans),
        )
    if "class_token" in variants:
        models["student_class_token"] = (
            "The ViT student without a distillation token (variant class_token).",
            build_student(cfg.student, "class_token", nc, chans),
        )
    models["pretrain_cnn"] = (
        f"The CNN backbone of pretrain, with its {pretrain_classes}-class head.",
        build_model(cfg.pretrain.model, pretrain_classes, chans),
    )
    models["pretrain_vit"] = (
        f"The ViT backbone of pretrain, with its {pretrain_classes}-class head.",
        build_model(cfg.pretrain.vit_model, pretrain_classes, chans),
    )
    models["gan_generator"] = (
        "The conditional DCGAN's generator (train_gan).",
        Generator(nc, chans, data.image_size, cfg.gan),
    )
    models["gan_discriminator"] = (
        f"The conditional DCGAN's discriminator ({cfg.gan.conditioning} conditioning).",
        Discriminator(nc, chans, data.image_size, cfg.gan),
    )
    fc = cfg.finetune
    backbones = {"cnn": cfg.pretrain.model, "vit": cfg.pretrain.vit_model}
    for strategy in fc.strategies:
        spec = STRATEGIES[strategy]
        model_cfg = backbones[spec.backbone]
        if spec.is_probe:
            dim = build_model(model_cfg, 0, chans).num_features
            note = f"finetune {strategy}: a head on cached {dim}-dim features of the frozen {model_cfg.name} backbone."
            models[f"finetune_{strategy}"] = (note, spec.head(dim, nc, fc.mlp_hidden))
            continue
        model = spec.freeze(build_model(model_cfg, nc, chans), fc)
        models[f"finetune_{strategy}"] = (f"finetune {strategy}: {model_cfg.name} with this freezing rule.", model)
    return {name: (note, summarize(model, SUMMARY_DEPTH)) for name, (note, model) in models.items()}


def write_summaries(summaries: dict[str, tuple[str, dict]], folder: Path) -> None:
    """``<name>.md`` per model and ``summary.json`` (name → summary); the folder is replaced whole."""
    import json

    from finch.io import atomic_dir
    from finch.model_summary import summary_markdown

    with atomic_dir(folder) as tmp:
        for name, (note, summary) in summaries.items():
            (tmp / f"{name}.md").write_text(summary_markdown(name, summary, note))
        data = {name: summary for name, (_, summary) in summaries.items()}
        (tmp / "summary.json").write_text(json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------------ MLflow
def artifacts_key(figure: Path, folder: Path) -> str:
    """The run key of the artifacts run: sha256 of the figure and summary.json, first 16 hex digits."""
    h = hashlib.sha256()
    h.update(figure.read_bytes())
    h.update((folder / "summary.json").read_bytes())
    return h.hexdigest()[:16]


def log_explanations(cfg: FinchConfig, figure: Path, folder: Path, params: dict) -> str | None:
    """One MLflow run holding the figure and the summaries; None when one with the same key exists.

    The run key tag is set last, once everything else is logged, so a half-logged run is
    never trusted (``Tracker.delete_incomplete_runs`` removes it).
    """
    from mlflow.entities import Param

    from finch.runs import run_tags
    from finch.tracking import KEY_TAG, Tracker

    key = artifacts_key(figure, folder)
    tracker = Tracker(cfg.tracking, cfg.profile)
    tracker.delete_incomplete_runs()  # a half-logged earlier attempt is replaced, not shown twice
    if key in tracker.logged_keys():
        return None
    client = tracker.client
    tags = run_tags("explain", "default", cfg.profile, **{"finch.kind": "artifacts"})
    run_id = client.create_run(tracker.experiment_id, run_name="explain", tags=tags).info.run_id
    try:
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        client.log_artifact(run_id, str(figure))
        client.log_artifacts(run_id, str(folder), folder.name)
        client.set_tag(run_id, KEY_TAG, key)
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


def log_explanations_safely(cfg: FinchConfig, figure: Path, folder: Path, params: dict) -> None:
    """:func:`log_explanations` where a failure only warns: the stage's files are already written."""
    from finch.tracking import shown_uri

    if not cfg.tracking.enabled:
        return
    try:
        run_id = log_explanations(cfg, figure, folder, params)
    except Exception as err:  # tracking must never cost the stage's outputs
        log.warning(
            "MLflow logging of the explanations failed (%s: %s); %s and %s are written; "
            "`dvc repro --force explain` logs them when the store is reachable",
            type(err).__name__,
            err,
            figure,
            folder,
        )
        return
    if run_id is None:
        log.info("MLflow: these explanations are already logged")
    else:
        log.info("MLflow: logged the explanations (run %s) to %s", run_id, shown_uri(cfg.tracking))
