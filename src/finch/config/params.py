"""``FinchConfig``: the whole of ``params.yaml``, its sections and the checks across them."""

from __future__ import annotations

from pydantic import Field, ValidationError, model_validator

from finch.config.base import Strict, deep_merge
from finch.config.data import DataConfig, validation_count
from finch.config.model import ModelConfig
from finch.config.recipe import RecipeConfig
from finch.config.runtime import (
    AggregateConfig,
    EvaluateConfig,
    RuntimeConfig,
    TrackingConfig,
    VerifyConfig,
)
from finch.config.stages import (
    AblationConfig,
    ExplainConfig,
    FinetuneConfig,
    GanConfig,
    PretrainConfig,
    StudentConfig,
    SyntheticConfig,
    TeacherConfig,
)
from finch.config.tune import TuneConfig

# The ViTs whose img_size / patch_size follow data.image_size unless their kwargs set them
# (student.model's kwargs also build the class_token variant's plain ViT).
VIT_SLOTS = ("pretrain.vit_model", "student.model")


class FinchConfig(Strict):
    profile: str = "default"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    runtime: RuntimeConfig = RuntimeConfig()
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    gan: GanConfig = GanConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    aggregate: AggregateConfig = AggregateConfig()
    ablation: AblationConfig = AblationConfig()
    explain: ExplainConfig = ExplainConfig()
    verify: VerifyConfig = VerifyConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _cross_checks(self) -> FinchConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} repeat a value; list each seed once")
        if self.pretrain.weights == "source" and self.data.source_classes != "rest" and not self.data.source_classes:
            raise ValueError(
                "pretrain.weights is 'source' but data.source_classes is empty: "
                "name source classes, or set pretrain.weights: timm"
            )
        for name in self.ablation.run:
            ablation_variant(self, name)  # raises with the variant's name and key
        scarce, per_class = self.synthetic.real_per_class, self.data.per_class_train
        if scarce is not None and per_class is not None:
            train_per_class = per_class - validation_count(per_class, self.data.val_fraction)
            if scarce > train_per_class:
                raise ValueError(
                    f"synthetic.real_per_class is {scarce} but data.per_class_train {per_class} leaves "
                    f"{train_per_class} training images per class after the validation split; "
                    f"set it to at most {train_per_class}, or null (all)"
                )
        # a k-fold run is an ensemble of k models per seed; these runs' weights are loaded later
        # as one model (the backbones, the students' teacher, explain's student, lp_ft's probe)
        loaded = {
            "pretrain.recipe": self.pretrain.recipe,
            "pretrain.vit_recipe": self.pretrain.vit_recipe,
            "teacher.recipe": self.teacher.recipe,
            "student.recipe": self.student.recipe,
            "finetune.probe_recipe": self.finetune.probe_recipe,
        }
        for where, recipe in loaded.items():
            if recipe.kfold.k >= 2:
                raise ValueError(
                    f"{where}.kfold.k is {recipe.kfold.k}: a k-fold run is an ensemble of k models per seed, "
                    "and a later stage loads this run's weights as one model; set k to 0 here and try k-fold "
                    "as an ablation variant (ablation.variants, e.g. kfold_5)"
                )
        return self

    @model_validator(mode="after")
    def _models_fit_the_data(self) -> FinchConfig:
        """Every model takes the data's channels (``in_chans`` = data.channels, passed by Finch),
        and the ViTs (:data:`VIT_SLOTS`) its image size: unset ``img_size`` / ``patch_size`` are
        filled in from data.image_size (:meth:`ModelConfig.fitted_to`), a mismatch fails here."""
        for key in ("pretrain.model", "pretrain.vit_model", "teacher.model", "student.model"):
            section, slot = key.split(".")
            model: ModelConfig = getattr(getattr(self, section), slot)
            owned = sorted({"in_chans", "num_classes"} & set(model.kwargs))
            if owned:
                raise ValueError(
                    f"{key}.kwargs sets {', '.join(owned)}; Finch passes them (data.channels, the task's "
                    f"classes): remove {' and '.join(owned)} from {key}.kwargs"
                )
            if key in VIT_SLOTS:
                fitted = model.fitted_to(self.data.image_size, key)
                # frozen: the validated config is rebuilt section by section, never mutated in place
                object.__setattr__(self, section, getattr(self, section).model_copy(update={slot: fitted}))
            elif model.kwargs.get("img_size", self.data.image_size) != self.data.image_size:
                raise ValueError(
                    f"{key}.kwargs.img_size is {model.kwargs['img_size']} but data.image_size is "
                    f"{self.data.image_size}; set it to {self.data.image_size}, or remove it"
                )
        return self


def ablation_variant(cfg: FinchConfig, name: str) -> tuple[ModelConfig, RecipeConfig]:
    """The model and recipe of ablation variant ``name``: the base stage's, with its overrides."""
    base = getattr(cfg, cfg.ablation.base)
    override = cfg.ablation.variants[name]
    try:
        model = ModelConfig.model_validate(deep_merge(base.model.model_dump(), override.get("model", {})))
        merged = deep_merge(base.recipe.model_dump(), override.get("recipe", {}))
        if merged["scheduler"]["name"] != "wsd" and "budgets" not in override.get("recipe", {}):
            # another schedule has no decay branches: it trains base.recipe.epochs and keeps its best
            # validation epoch (unless the variant says otherwise), and is compared at every budget
            merged["budgets"] = []
            merged["select_on"] = override.get("recipe", {}).get("select_on", "val_accuracy")
        recipe = RecipeConfig.model_validate(merged)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise ValueError(f"ablation.variants.{name}: {problems}") from None
    return model, recipe
