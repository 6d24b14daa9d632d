import copy
from pathlib import Path

import pytest
import yaml

from finch.cli import render_profile, write_profile
from finch.config import AugmentConfig, FinchConfig, RecipeConfig, deep_merge, flatten, load_params, parse_params
from finch.errors import ConfigError

from .conftest import REPO


def default_raw() -> dict:
    raw, _ = render_profile("default", REPO / "profiles")
    return raw


def test_every_profile_validates():
    for name in ("default", "smoke", "cub200", "fmnist_gpu"):
        raw, _ = render_profile(name, REPO / "profiles")
        cfg = parse_params(raw)
        assert cfg.profile == name


def test_committed_params_yaml_is_the_default_profile():
    assert yaml.safe_load((REPO / "params.yaml").read_text()) == default_raw()


def differing_keys(a: dict, b: dict) -> list[str]:
    """The dotted keys whose values differ between two configs' dumps (or that only one has)."""
    flat_a, flat_b = flatten(a), flatten(b)
    missing = object()
    return [k for k in sorted(flat_a.keys() | flat_b.keys()) if flat_a.get(k, missing) != flat_b.get(k, missing)]


def test_default_profile_is_the_python_defaults():
    """One source of defaults: every field's Python default is the default profile's value."""
    profile = parse_params(default_raw()).model_dump(mode="json")
    python = FinchConfig().model_dump(mode="json")
    differ = differing_keys(profile, python)
    assert not differ, "profiles/default.yaml and FinchConfig() disagree on: " + ", ".join(
        f"{k} (profile {flatten(profile).get(k)!r}, Python {flatten(python).get(k)!r})" for k in differ
    )
    assert profile == python


def test_the_default_recipe_is_the_teachers():
    """The recipe is written once: RecipeConfig() is the default profile's teacher recipe, and
    the default profile's other recipes state only keys whose values differ from it."""
    raw = default_raw()
    assert parse_params(raw).teacher.recipe == RecipeConfig()
    default = flatten(RecipeConfig())
    for section, slot in [
        ("pretrain", "recipe"),
        ("pretrain", "vit_recipe"),
        ("student", "recipe"),
        ("finetune", "probe_recipe"),
        ("finetune", "recipe"),
        ("finetune", "vit_recipe"),
    ]:
        stated = flatten(raw[section][slot])
        repeated = sorted(k for k, v in stated.items() if default[k] == v)
        assert not repeated, f"{section}.{slot} repeats the default recipe's {repeated}"


def leaf_paths(data: dict, path: tuple = ()) -> list[tuple]:
    return [
        p
        for key, value in data.items()
        for p in (leaf_paths(value, (*path, key)) if isinstance(value, dict) and value else [(*path, key)])
    ]


def parsed_or_error(raw: dict) -> str:
    try:
        return parse_params(raw).model_dump_json()
    except ConfigError as err:
        return str(err)


@pytest.mark.parametrize("name", ["smoke", "fmnist_gpu", "cub200"])
def test_a_profile_states_only_what_differs_from_its_parent(name):
    """Each key a profile sets changes its parsed config: none repeats what it inherits."""
    raw = yaml.safe_load((REPO / "profiles" / f"{name}.yaml").read_text())
    parent, _ = render_profile(raw.pop("extends"), REPO / "profiles")
    merged = parsed_or_error(deep_merge(parent, raw))
    repeats = []
    for path in leaf_paths(raw):
        trimmed = copy.deepcopy(raw)
        node = trimmed
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        if parsed_or_error(deep_merge(parent, trimmed)) == merged:
            repeats.append(".".join(path))
    assert not repeats, f"profiles/{name}.yaml repeats its parent's values: {repeats}"


def test_unknown_key_is_named_with_allowed_keys():
    raw = default_raw()
    raw["teacher"]["recipe"]["optimiser"] = {"lr": 0.1}
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert "teacher.recipe.optimiser: unknown key" in msg
    assert "optimizer" in msg and "batch_size" in msg


def test_wrong_type_and_out_of_range_values_are_named():
    raw = default_raw()
    raw["teacher"]["recipe"]["epochs"] = "many"
    raw["data"]["val_fraction"] = 1.5
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert "teacher.recipe.epochs" in msg and "'many'" in msg
    assert "data.val_fraction" in msg and "less than 1" in msg


def test_bad_choice_lists_allowed_values():
    raw = default_raw()
    raw["teacher"]["recipe"]["optimizer"]["name"] = "lion"
    with pytest.raises(ConfigError, match=r"optimizer.name.*'sgd', 'adam' or 'adamw'"):
        parse_params(raw)


def test_cross_field_checks():
    raw = default_raw()
    raw["seeds"] = [1, 1]
    with pytest.raises(ConfigError, match="repeat"):
        parse_params(raw)
    raw = default_raw()
    raw["data"]["mean"] = [0.5, 0.5, 0.5]
    with pytest.raises(ConfigError, match="data.mean has 3 values"):
        parse_params(raw)
    raw = default_raw()
    raw["teacher"]["recipe"]["augment"]["mixup_alpha"] = 0.2
    raw["teacher"]["recipe"]["batch_size"] = 33
    with pytest.raises(ConfigError, match="must be even"):
        parse_params(raw)


@pytest.mark.parametrize("scale", [0.0, 1.5])
def test_lp_ft_learning_rate_scale_is_validated(scale):
    raw = default_raw()
    raw["finetune"]["lp_ft_lr_scale"] = scale
    with pytest.raises(ConfigError, match=r"finetune.lp_ft_lr_scale.*(greater|less) than"):
        parse_params(raw)


@pytest.mark.parametrize("section", ["teacher", "student"])
def test_kfold_is_refused_where_a_later_stage_loads_one_model(section):
    raw = default_raw()
    raw[section]["recipe"]["kfold"] = {"k": 5}
    with pytest.raises(ConfigError, match=rf"{section}.recipe.kfold.k is 5: .*ensemble"):
        parse_params(raw)
    raw = default_raw()
    raw["ablation"]["run"] = ["kfold_5"]
    assert parse_params(raw).ablation.run == ["kfold_5"]  # k-fold belongs in the ablation


def test_missing_and_malformed_params_files(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("seeds: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_profile_switch_writes_validated_params(tmp_path: Path):
    dest = tmp_path / "params.yaml"
    write_profile("smoke", dest, REPO / "profiles")
    cfg = load_params(dest)
    assert cfg.profile == "smoke" and cfg.seeds == [0, 1]
    assert cfg.data.target_classes == ["T-shirt/top", "Pullover", "Coat", "Shirt"]  # inherited
    with pytest.raises(ConfigError, match="known profiles"):
        write_profile("nope", dest, REPO / "profiles")


def test_deep_merge_recurses_and_shares_nothing_with_its_inputs():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    override = {"a": {"y": [3]}, "c": {"z": [4]}}
    merged = deep_merge(base, override)
    assert merged == {"a": {"x": 1, "y": [3]}, "b": 2, "c": {"z": [4]}}
    merged["a"]["x"] = 9
    merged["c"]["z"].append(5)
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 2} and override == {"a": {"y": [3]}, "c": {"z": [4]}}


def test_mixing_is_on_when_mixup_or_cutmix_is():
    assert not AugmentConfig().mixing
    assert AugmentConfig(mixup_alpha=0.2).mixing and AugmentConfig(cutmix_alpha=1.0).mixing
    assert "mixing" not in RecipeConfig().model_dump()["augment"]  # derived, so not part of any run's hash


# ------------------------------------------------------------------ model input sizes follow the data
def own_data(raw: dict, size: int = 32, channels: int = 3) -> dict:
    """``raw`` pointed at an RGB image folder of ``size`` px (the README's "Your own dataset")."""
    raw["data"].update(
        source="image_folder", root="data/mine", image_size=size, channels=channels, mean=[0.5] * 3, std=[0.25] * 3
    )
    return raw


def test_vit_patch_size_rule():
    from finch.config import vit_patch_size

    picks = {size: vit_patch_size(size) for size in (8, 28, 30, 32, 48, 64, 96, 224, 31)}
    assert picks == {8: 2, 28: 7, 30: 6, 32: 8, 48: 12, 64: 16, 96: 16, 224: 16, 31: None}


def test_default_profile_leaves_the_vit_sizes_to_the_data():
    """The default pins no ViT size (a new dataset needs no edit there): 28 px gives 7 px patches."""
    raw = default_raw()
    assert not {"img_size", "patch_size"} & set(raw["pretrain"]["vit_model"]["kwargs"])
    assert not {"img_size", "patch_size"} & set(raw["student"]["model"]["kwargs"])
    cfg = parse_params(raw)
    assert cfg.pretrain.vit_model.kwargs == {
        "img_size": 28,
        "patch_size": 7,
        "embed_dim": 96,
        "depth": 4,
        "num_heads": 3,
    }
    # the student's tokenizer makes a token of each position of its map: patches of 1, the size the data's
    assert (cfg.student.model.kwargs["img_size"], cfg.student.model.kwargs["patch_size"]) == (28, 1)
    assert cfg.student.model.tokenizer.channels == [32, 64, 96]


def test_explicit_vit_size_the_data_does_not_have_fails_naming_both_keys():
    raw = own_data(default_raw())
    raw["pretrain"]["vit_model"]["kwargs"].update(img_size=28, patch_size=7)  # a profile pinning them on purpose
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    msg = str(err.value)
    assert "pretrain.vit_model.kwargs.img_size is 28 but data.image_size is 32" in msg
    assert "to 32" in msg and "or to null" in msg


def test_unset_vit_sizes_follow_the_data_and_the_models_take_its_images():
    import torch

    from finch.distill import build_student
    from finch.models import build_model

    raw = own_data(default_raw())
    for section in (raw["pretrain"]["vit_model"], raw["student"]["model"]):
        section["kwargs"].update(img_size=None, patch_size=None)  # null: follow data.image_size
    cfg = parse_params(raw)
    assert (cfg.pretrain.vit_model.kwargs["img_size"], cfg.pretrain.vit_model.kwargs["patch_size"]) == (32, 8)
    assert (cfg.student.model.kwargs["img_size"], cfg.student.model.kwargs["patch_size"]) == (32, 1)  # tokenizer
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():
        assert build_model(cfg.pretrain.vit_model, 4, 3).eval()(x).shape == (2, 4)
        for variant in ("hard", "class_token"):  # the distilled ViT and the plain class-token ViT
            out = build_student(cfg.student, variant, 4, 3).eval()(x)
            assert (out[0] if isinstance(out, tuple) else out).shape == (2, 4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"img_size": 32, "patch_size": 7}, r"student.model.kwargs.patch_size 7 does not divide img_size 32.*e\.g\. 8"),
        ({"img_size": None, "patch_size": None, "in_chans": 3}, r"student.model.kwargs sets in_chans.*data.channels"),
    ],
)
def test_vit_settings_that_cannot_take_the_data_fail_in_check(kwargs, match):
    raw = own_data(default_raw())
    raw["pretrain"]["vit_model"]["kwargs"].update(img_size=None, patch_size=None)
    raw["student"]["model"]["kwargs"].update(kwargs)
    raw["student"]["model"]["tokenizer"] = None  # patches: the size rule applies
    with pytest.raises(ConfigError, match=match):
        parse_params(raw)


def test_a_size_without_a_patch_divisor_fails_in_check():
    raw = default_raw()
    raw["data"]["image_size"] = 31
    raw["pretrain"]["vit_model"]["kwargs"].update(img_size=None, patch_size=None)
    with pytest.raises(ConfigError, match=r"pretrain.vit_model: no patch size from 2 to 16 divides"):
        parse_params(raw)


def test_null_unsets_an_inherited_kwarg():
    cfg = parse_params(render_profile("cub200", REPO / "profiles")[0])
    assert cfg.pretrain.vit_model.kwargs == {"img_size": 224, "patch_size": 16}  # vit_small's own widths
    assert cfg.teacher.model.kwargs == {} and cfg.pretrain.model.kwargs == {}  # resnet50's own channels
    assert "embed_dim" not in cfg.student.model.kwargs  # deit_tiny's, so its pretrained weights fit


def test_every_number_a_profile_cites_names_the_validation_split():
    """Issue 26.8: a comment that justifies a choice with a measured score says it is a validation
    number (design is read off validation only; the test split is touched once, after it)."""
    import re

    score = re.compile(r"(measured|reached|\bvs\b|accuracy|[+-]0\.\d{3})")
    for path in sorted((REPO / "profiles").glob("*.yaml")):
        blocks, block = [], []
        for line in path.read_text().splitlines():
            comment = line.split("#", 1)[1] if "#" in line else ""
            if line.lstrip().startswith("#") or (comment and block and not line.split("#", 1)[0].strip()):
                block.append(comment)
            else:
                if block:
                    blocks.append(" ".join(block))
                block = [comment] if comment else []
        blocks.append(" ".join(block))
        for text in blocks:
            if score.search(text) and re.search(r"\b0\.\d{2,}", text):
                assert "validation" in text, f"{path.name}: a cited number without its split: {text.strip()[:160]}"
