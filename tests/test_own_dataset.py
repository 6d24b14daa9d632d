"""The README's "Your own dataset", end to end: its profile block, at smoke size, on a generated
RGB ImageFolder of 32 px images (not Fashion-MNIST's 28), through `finch check` and every stage
(in one process: `dvc repro` itself is under test in test_pipeline_e2e)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from finch.config import STUDENT_VARIANTS
from finch.runs import find_records

from .conftest import REPO
from .servers import make_smoke_repo, run, run_stages, smoke_env

pytestmark = pytest.mark.slow
IMAGES_PER_CLASS = 12  # 2 test, 2 validation, 8 training images per class
TINY = {
    "seeds": [0],
    # 16 training images: batches of 8 leave 2 steps an epoch, so budgets 1.5 and 2 epochs stay 3 and 4 steps
    "teacher": {"recipe": {"batch_size": 8}},
    "student": {"recipe": {"batch_size": 8}},
    "finetune": {
        "strategies": ["linear_probe", "scratch", "vit_linear_probe", "vit_lora", "vit_full"],
        "recipe": {"batch_size": 8},
    },
    # smoke size: the scarce-data study on the 8 training images a class (its 20 would fail `finch check`)
    "synthetic": {"ratios": [1.0], "real_per_class": None},
    "ablation": {"run": []},
}


def readme_profile() -> dict:
    """The profile block of the README's "Your own dataset" section."""
    section = (REPO / "README.md").read_text().split("## Your own dataset", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(# profiles/mine\.yaml.*?)```", section, re.S)
    assert block, "README's 'Your own dataset' lacks its profiles/mine.yaml block"
    return yaml.safe_load(block.group(1))


def make_rgb_folder(root: Path, classes: list[str], size: int) -> None:
    """``root/<class>/<n>.png``: RGB images, a colour per class plus noise, at and around ``size``."""
    rng = np.random.default_rng(0)
    for ci, name in enumerate(classes):
        colour = np.array([60 + 50 * ci, 200 - 40 * ci, 40 + 60 * (ci % 2)])
        for i in range(IMAGES_PER_CLASS):
            h, w = size + 4 * (i % 3), size + 2 * (i % 2)  # not all square, not all at the size
            pixels = np.clip(colour + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, "RGB").save(root / name / f"{i}.png")


@pytest.fixture(scope="module")
def own_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("own-dataset")
    env = smoke_env()
    make_smoke_repo(repo, env)
    profile = readme_profile()
    assert profile["extends"] == "default" and profile["data"]["image_size"] != 28
    profile["extends"] = "smoke"  # the README's profile at the smoke profile's sizes, smaller still:
    profile.update(TINY)  # one seed, the ViT strategies, no longer checks; every stage still runs
    classes = profile["data"]["target_classes"] + profile["data"]["source_classes"]
    make_rgb_folder(repo / profile["data"]["root"], classes, profile["data"]["image_size"])
    (repo / "profiles" / "mine.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    run([sys.executable, "-m", "finch.cli", "profile", "mine"], repo, env)
    check = run([sys.executable, "-m", "finch.cli", "check"], repo, env)
    run_stages(repo, env)
    return repo, env, profile, check.stdout


def test_check_passes_and_every_stage_runs_on_32px_rgb(own_repo):
    repo, _, profile, checked = own_repo
    assert "params.yaml: OK" in checked
    card = json.loads((repo / "data/prepared/card.json").read_text())
    size = profile["data"]["image_size"]
    assert (card["image_size"], card["channels"]) == (size, 3)
    assert card["target"]["classes"] == profile["data"]["target_classes"]
    records = find_records(repo / "reports/runs")
    students = sorted((r.variant, r.seed) for r in records if r.stage == "student")
    assert students == sorted((v, 0) for v in STUDENT_VARIANTS)
    vit_runs = [r for r in records if r.variant == "vit_source" or r.stage == "student"]
    assert len(vit_runs) == 1 + len(STUDENT_VARIANTS)
    for rec in vit_runs:  # the ViTs took the data's size, with the patch the README's rule picks
        prefix = "student.model" if rec.stage == "student" else "model"
        sizes = (rec.params[f"{prefix}.kwargs.img_size"], rec.params[f"{prefix}.kwargs.patch_size"])
        # the student's tokenizer makes a token of each position of its map: patches of 1
        assert sizes == (size, 1 if rec.stage == "student" else 8), rec.run_name
    assert {r.variant for r in records if r.stage == "finetune"} >= {"vit_full", "vit_lora", "vit_linear_probe"}
    assert (repo / "reports/results.md").is_file() and (repo / "reports/explanations.png").is_file()


def readme_config(root: Path, images_per_class: int):
    """The README's profile, exactly, over a folder of ``images_per_class`` listed (empty) files a class."""
    from finch.cli import render_profile
    from finch.config import deep_merge, parse_params

    profile = readme_profile()
    for name in profile["data"]["target_classes"] + profile["data"]["source_classes"]:
        (root / name).mkdir(parents=True)
        for i in range(images_per_class):
            (root / name / f"{i}.png").touch()  # the check lists files; it decodes none
    raw, _ = render_profile(profile["extends"], REPO / "profiles")
    raw = deep_merge(raw, {k: v for k, v in profile.items() if k != "extends"})
    raw["data"]["root"] = str(root)
    return parse_params(raw)


@pytest.mark.parametrize("images", [30, 200])
def test_the_readme_block_alone_fits_a_folder_or_check_names_the_key_and_the_fix(tmp_path, images):
    """One edit: the README's data block and nothing else. A folder too small for the scarce-data
    study (the default's 100 training images a class) fails before any image is read, naming
    synthetic.real_per_class, the class and the largest value that fits; a larger one passes."""
    from finch.data.prepare import check_scarce_size

    cfg = readme_config(tmp_path / "images", images)
    assert cfg.synthetic.real_per_class == 100
    assert cfg.pretrain.vit_model.kwargs["img_size"] == cfg.data.image_size  # the ViT follows the data
    if images == 200:  # 200 - 40 test - 32 validation = 128 training images a class
        check_scarce_size(cfg.data, cfg.synthetic.real_per_class)
        return
    with pytest.raises(ValueError) as err:  # 30 - 6 test - 5 validation = 19
        check_scarce_size(cfg.data, cfg.synthetic.real_per_class)
    msg = str(err.value)
    assert "synthetic.real_per_class is 100" in msg and "19 training images" in msg
    assert "at most 19" in msg and "or null" in msg
