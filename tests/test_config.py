from pathlib import Path

import pytest
import yaml

from finch.cli import render_profile, write_profile
from finch.config import AugmentConfig, RecipeConfig, deep_merge, load_params, parse_params
from finch.errors import ConfigError

from .conftest import REPO


def default_raw() -> dict:
    raw, _ = render_profile("default", REPO / "profiles")
    return raw


def test_every_profile_validates():
    for name in ("default", "smoke", "cub200"):
        raw, _ = render_profile(name, REPO / "profiles")
        cfg = parse_params(raw)
        assert cfg.profile == name


def test_committed_params_yaml_is_the_default_profile():
    assert yaml.safe_load((REPO / "params.yaml").read_text()) == default_raw()


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
