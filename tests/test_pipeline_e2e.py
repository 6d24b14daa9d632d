"""End to end: the smoke profile through `dvc repro` in a temporary copy of the repository."""

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from finch.config import STUDENT_VARIANTS, TRANSFER_STRATEGIES
from finch.pipeline.table import STAGES
from finch.runs import find_records

from .conftest import REPO

pytestmark = pytest.mark.slow
AUGMENTED = ("synthetic_only", "real_scratch", "real", "mix_0.5", "mix_1")
COPY = ["dvc.yaml", "profiles", "stages", "src", "pyproject.toml"]


def run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory) -> tuple[Path, dict]:
    repo = tmp_path_factory.mktemp("smoke")
    for name in COPY:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, repo / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": "",
        "DVC_NO_ANALYTICS": "1",
    }
    env.pop("MLFLOW_TRACKING_URI")
    run(["git", "init", "-q"], repo, env)
    run(["dvc", "init", "-q"], repo, env)
    run([sys.executable, "-m", "finch.cli", "profile", "smoke"], repo, env)
    run(["dvc", "repro"], repo, env)
    return repo, env


def test_smoke_outputs_and_records(smoke_repo):
    repo, _ = smoke_repo
    for path in [
        "data/prepared/card.json",
        "models/pretrain/backbone.safetensors",
        "reports/results.md",
        "reports/summary.json",
        "reports/runs.csv",
        "reports/figures/teacher_confusion.png",
        "reports/figures/forest_accuracy.png",
    ]:
        assert (repo / path).is_file(), path
    records = find_records(repo / "reports/runs")
    runs = sorted((r.stage, r.variant, r.seed) for r in records)
    assert [r for r in runs if r[0] in ("pretrain", "teacher")] == [
        ("pretrain", "source", 0),
        ("pretrain", "vit_source", 0),
        ("teacher", "default", 0),
        ("teacher", "default", 1),
    ]
    students = [r for r in runs if r[0] == "student"]
    assert students == sorted(("student", v, s) for v in STUDENT_VARIANTS for s in (0, 1))
    assert [r for r in runs if r[0] == "gan"] == [("gan", "default", 0)]
    mixes = [r for r in runs if r[0] == "augmented"]
    assert mixes == sorted(("augmented", v, s) for v in AUGMENTED for s in (0, 1))
    strategies = [r for r in runs if r[0] == "finetune"]
    assert strategies == sorted(("finetune", v, s) for v in TRANSFER_STRATEGIES for s in (0, 1))
    for rec in records:
        if rec.stage == "finetune":
            m = rec.metrics
            assert 0 < m["params_trainable"] <= m["params_total"], rec.variant
            frozen = rec.variant not in ("full", "lp_ft", "scratch", "vit_full")  # probes: backbone frozen
            assert (m["params_trainable"] < m["params_total"]) == frozen, rec.variant
    hard = next(r for r in records if r.variant == "hard")
    assert {"accuracy.head_cls", "accuracy.head_dist", "teacher_agreement"} <= set(hard.metrics)
    results = (repo / "reports/results.md").read_text()
    assert "CNN teacher" in results and "95% t interval" in results
    assert "Paired differences against `none`" in results
    assert "Paired differences against `linear_probe`" in results and "Paired differences against `scratch`" in results
    assert (repo / "reports/figures/finetune_pareto.png").is_file()
    assert "Paired differences against `teacher/default`" in results and "Fréchet distance" in results
    assert (repo / "reports/gan_samples.png").is_file()
    quality = json.loads((repo / "reports/synthetic_quality.json").read_text())
    assert set(quality["per_class"]) == {"T-shirt/top", "Pullover", "Coat", "Shirt"}
    overall = quality["overall"]
    assert overall["fid"] > overall["reference"]["fid"] > 0  # a 2-epoch GAN is farther from real than real is
    assert 0 <= overall["precision"] <= 1
    assert [r for r in runs if r[0] == "ablation"] == [("ablation", "focal", 0), ("ablation", "focal", 1)]
    focal = next(r for r in records if r.stage == "ablation")
    assert focal.params["recipe.loss.name"] == "focal"
    assert "Recipe ablation" in results and "Ensembles of the seed models" in results
    assert "Wilcoxon p (Holm)" in results and "seeds for 80%" in results
    ensemble = json.loads((repo / "reports/runs/teacher/default/ensemble.json").read_text())
    teachers = sorted((r for r in records if r.stage == "teacher"), key=lambda r: r.seed)
    assert ensemble["seeds"] == [0, 1]
    single_mean = sum(r.metrics["accuracy"] for r in teachers) / 2
    assert ensemble["single_mean"]["accuracy"] == pytest.approx(single_mean)  # the mean of the seed models' own
    for path in [
        "reports/explanations.png",
        "reports/models/summary.json",
        "reports/comparisons.csv",
        "reports/headline.md",
        "reports/plots/accuracy.csv",
        "reports/plots/curves_student.csv",
        "reports/budgets.csv",
        "reports/plateau.csv",
        "reports/budget_comparisons.csv",
    ]:
        assert (repo / path).is_file(), path
    # budget curves (issue 26): one run per seed, a decay branch at 6 steps and the main run to 8
    assert all([b["steps"] for b in r.budgets] == [6, 8] for r in teachers)
    assert "Plateau rule" in results and "Every comparison at every budget" in results
    hard_vs_none = pd.read_csv(repo / "reports/budget_comparisons.csv").query(
        "variant == 'hard' and baseline == 'none'"
    )
    assert list(hard_vs_none.steps) == [6, 8] and hard_vs_none.verdict.nunique() == 1
    probe = next(r for r in records if r.variant == "linear_probe")
    assert probe.history[0]["C"] > 0 and not probe.budgets  # the closed-form probe: compared at every budget
    assert quality["real_split"] == "validation" and quality["overall"]["reference"]["draws"] >= 2
    # each training stage's own DVC metrics: its variants' means over seeds
    student_metrics = json.loads((repo / "reports/metrics/train_student.json").read_text())
    assert set(student_metrics["student"]) == set(STUDENT_VARIANTS)
    assert student_metrics["student"]["hard"]["accuracy"]["n"] == 2
    stages = ("pretrain", "train_teacher", "finetune", "train_gan", "train_augmented", "ablation")
    assert all((repo / f"reports/metrics/{stage}.json").is_file() for stage in stages)


def test_dvc_plots_and_metrics_render(smoke_repo):
    repo, env = smoke_repo
    run(["dvc", "plots", "show", "-o", "plots_html"], repo, env)
    html = (repo / "plots_html" / "index.html").read_text()
    assert "curves_student.csv::hard" in html and "test accuracy per variant" in html and "against budget" in html
    metrics = run(["dvc", "metrics", "show", "--json"], repo, env).stdout
    assert "teacher" in json.loads(metrics)[""]["data"]["reports/summary.json"]["data"]


def test_mlflow_has_every_run(smoke_repo):
    import mlflow

    repo, _ = smoke_repo
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["finch-smoke"])
    seeds = runs[runs["tags.finch.kind"].isin(["classifier", "gan"])]  # not the summaries, not explain's artifacts
    variants = STUDENT_VARIANTS
    expected = ["pretrain/source/seed=0", "pretrain/vit_source/seed=0", "teacher/seed=0", "teacher/seed=1"]
    expected += [f"student/{v}/seed={s}" for v in variants for s in (0, 1)]
    expected += [f"finetune/{v}/seed={s}" for v in TRANSFER_STRATEGIES for s in (0, 1)]
    expected += [f"augmented/{v}/seed={s}" for v in AUGMENTED for s in (0, 1)] + ["gan/seed=0"]
    expected += ["ablation/focal/seed=0", "ablation/focal/seed=1"]
    assert sorted(seeds["tags.mlflow.runName"]) == sorted(expected)
    assert set(runs["status"]) == {"FINISHED"}
    assert seeds[seeds["tags.finch.stage"] != "gan"]["metrics.accuracy"].between(0, 1).all()
    summaries = runs[runs["tags.finch.kind"] == "summary"]
    teacher_summary = summaries[summaries["tags.mlflow.runName"] == "teacher/summary"].iloc[0]
    low, mean, high = (teacher_summary[f"metrics.accuracy_{k}"] for k in ("ci_low", "mean", "ci_high"))
    teacher_acc = seeds[seeds["tags.finch.stage"] == "teacher"]["metrics.accuracy"]
    assert mean == pytest.approx(teacher_acc.mean()) and low < mean < high  # the summary of its seed runs
    assert "metrics.accuracy.boot_low" not in runs and "metrics.precision_macro_mean" not in runs  # few, named
    client = mlflow.tracking.MlflowClient()
    experiment = client.get_experiment_by_name("finch-smoke")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    teacher_run = client.get_run(seeds[seeds["tags.mlflow.runName"] == "teacher/seed=0"]["run_id"].iloc[0])
    assert {d.dataset.name for d in teacher_run.inputs.dataset_inputs} == {"target/train", "target/val", "target/test"}
    assert sorted(summaries["tags.mlflow.runName"]) == sorted(
        ["pretrain/source/summary", "pretrain/vit_source/summary", "teacher/summary"]
        + [f"student/{v}/summary" for v in variants]
        + [f"finetune/{v}/summary" for v in TRANSFER_STRATEGIES]
        + [f"augmented/{v}/summary" for v in AUGMENTED]
        + ["ablation/focal/summary"]  # the GAN has no headline metric to summarise
    )
    # the UI nests seed runs under their variant's summary run
    parent_of = dict(zip(summaries["tags.mlflow.runName"], summaries["run_id"], strict=True))
    for _, row in seeds.iterrows():
        name = row["tags.mlflow.runName"].rsplit("/seed=", 1)[0]
        parent = row["tags.mlflow.parentRunId"]
        if name == "gan":  # no summary run, so nothing to nest under
            assert not isinstance(parent, str), parent
        else:
            assert parent == parent_of[f"{name}/summary"], name
    explain = runs[runs["tags.finch.stage"] == "explain"]
    assert len(explain) == 1
    assert {"explanations.png"} <= {a.path for a in client_artifacts(explain["run_id"].iloc[0])}
    # side-by-side comparison in the UI: the variants are filterable by tag
    hard = seeds[seeds["tags.finch.variant"] == "hard"]
    assert len(hard) == 2 and hard["metrics.teacher_agreement"].between(0, 1).all()
    gan = seeds[seeds["tags.finch.stage"] == "gan"]
    grids = client.list_artifacts(gan["run_id"].iloc[0], "sample_grids")
    assert len(grids) == 2  # one fixed-noise grid per epoch (smoke: 2 epochs)
    assert len(client.get_metric_history(gan["run_id"].iloc[0], "d_loss")) == 2


def client_artifacts(run_id: str) -> list:
    import mlflow

    return mlflow.tracking.MlflowClient().list_artifacts(run_id)


def repro_stages(repo, env) -> set[str]:
    out = run(["dvc", "repro"], repo, env).stdout
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


def set_param(repo, dotted: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    *path, key = dotted.split(".")
    node = params
    for part in path:
        node = node[part]
    node[key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def changed_stages(repo, env) -> set[str]:
    """The stages whose own recorded dependencies (code, params, upstream outputs) differ from the
    workspace (`dvc status`, through DVC's API in this process: a CLI start costs a second each):
    what a parameter change invalidates directly."""
    from dvc.repo import Repo

    with contextlib.chdir(repo), Repo() as dvc:  # stage names as the CLI prints them: relative to the cwd
        return set(dvc.status())


def stages_a_repro_runs(repo, env) -> set[str]:
    """The stages `dvc repro` would run now, found without training: DVC's own `dvc status`,
    wave by wave. Each changed stage is "rerun" by giving every output of its row new contents
    and `dvc commit`-ing it, which is what a real run does to the lock; the stages whose recorded
    deps then differ are the next wave, until none is left. (A real repro of a teacher change
    here trained six stages for ~50 s; the decision which stages run is DVC's either way.)"""
    from dvc.repo import Repo

    ran: set[str] = set()
    while wave := changed_stages(repo, env):
        assert not wave & ran, f"{wave & ran} would run twice"
        for name in wave:
            for path in STAGES[name].outs:
                target = repo / path
                if target.is_dir():
                    (target / "rerun.txt").write_text(f"{name} rerun {len(ran)}")
                elif target.exists():  # JSON or PNG: a trailing byte changes the hash, not the reading
                    target.write_bytes(target.read_bytes() + b" ")
        with contextlib.chdir(repo), Repo() as dvc:
            for name in sorted(wave):
                dvc.commit(name, force=True)
        ran |= wave
    return ran


def test_second_repro_does_nothing_and_param_changes_rerun_only_what_depends(smoke_repo):
    repo, env = smoke_repo
    assert repro_stages(repo, env) == set()
    assert "up to date" in run(["dvc", "status"], repo, env).stdout
    # one change reproduced: a teacher's new weights rerun everything that loads them, and only that
    set_param(repo, "teacher.recipe.epochs", 1)  # students learn from teachers; ablations vary its recipe
    assert changed_stages(repo, env) == {"train_teacher", "train_augmented", "ablation"}  # explain: via the weights
    assert stages_a_repro_runs(repo, env) == {
        "train_teacher",
        "train_student",
        "train_augmented",
        "ablation",
        "explain",
        "aggregate",
    }
    # what each parameter invalidates itself; the rest downstream reruns as above once outputs change
    # (explain builds the student from its params; it reads nothing of the transfer study or the GAN)
    set_param(repo, "student.recipe.batch_size", 16)
    assert changed_stages(repo, env) == {"train_student", "explain"}
    set_param(repo, "ablation.run", ["focal", "l1"])
    assert changed_stages(repo, env) == {"train_student", "explain", "ablation"}
    set_param(repo, "finetune.mlp_hidden", 32)  # a head parameter: the feature cache is reused
    assert changed_stages(repo, env) == {"train_student", "explain", "ablation", "finetune"}
    set_param(repo, "synthetic.ratios", [1.0])  # the GAN is not retrained for another mix
    assert changed_stages(repo, env) == {
        "train_student",
        "explain",
        "ablation",
        "finetune",
        "generate",
        "train_augmented",
    }


def test_bad_params_fail_before_work(smoke_repo):
    repo, env = smoke_repo
    params = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(params.replace("val_fraction: 0.2", "val_fraction: 2"))
    out = subprocess.run([sys.executable, "stages/prepare.py"], cwd=repo, env=env, capture_output=True, text=True)
    (repo / "params.yaml").write_text(params)
    assert out.returncode == 2
    assert "data.val_fraction" in out.stderr and "Traceback" not in out.stderr


def test_a_training_stage_runs_as_slurm_jobs_with_the_process_pools_numbers(smoke_repo):
    """runtime.executor slurm through submitit's local executor (sbatch aside, the cluster's path):
    each teacher run is one job; the records are the process pool's, and MLflow logs them."""
    import mlflow

    repo, env = smoke_repo
    run([sys.executable, "-m", "finch.cli", "profile", "smoke"], repo, env)  # the params the fixture ran
    teachers = {(r.seed): r for r in find_records(repo / "reports/runs") if r.stage == "teacher"}
    set_param(repo, "runtime.executor", "slurm")
    set_param(repo, "runtime.slurm", {"cluster": "local", "poll_s": 0.5, "array_parallelism": 2})
    try:
        out = run(["dvc", "repro", "-s", "train_teacher"], repo, env)
    finally:
        run([sys.executable, "-m", "finch.cli", "profile", "smoke"], repo, env)
    assert "2 run(s) as SLURM jobs" in out.stderr and "jobs: " in out.stderr
    jobs = {(r.seed): r for r in find_records(repo / "reports/runs") if r.stage == "teacher"}
    assert {s: r.metrics for s, r in jobs.items()} == {s: r.metrics for s, r in teachers.items()}
    assert {s: r.run_key for s, r in jobs.items()} == {s: r.run_key for s, r in teachers.items()}  # the same runs
    untimed = {s: [{k: v for k, v in row.items() if "time" not in k} for row in r.history] for s, r in jobs.items()}
    assert untimed == {
        s: [{k: v for k, v in row.items() if "time" not in k} for row in r.history] for s, r in teachers.items()
    }
    assert "MLflow: logged" in out.stderr  # the stage logs its runs as always (a run key already there is kept)
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    logged = mlflow.search_runs(experiment_names=["finch-smoke"], filter_string="tags.`finch.stage` = 'teacher'")
    assert {r.tags["finch.run_key"] for r in jobs.values()} <= set(logged["tags.finch.run_key"])


def test_a_training_stage_runs_under_torchrun(smoke_repo):
    """The DVC stage command takes its launcher from params: DDP with 2 CPU processes (gloo). It
    trains, evaluates the whole test split once (no row dropped or counted twice), and rank 0
    alone writes and logs."""
    import mlflow

    repo, env = smoke_repo
    set_param(repo, "runtime.launcher", f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node=2")
    set_param(repo, "runtime.threads", 1)
    run(["dvc", "repro", "-s", "train_teacher"], repo, env)
    teachers = [r for r in find_records(repo / "reports/runs") if r.stage == "teacher"]
    assert sorted(r.seed for r in teachers) == [0, 1]  # written once, by rank 0
    card = json.loads((repo / "data/prepared/card.json").read_text())
    n_test = sum(card["target"]["counts"]["test"].values())
    recipe = yaml.safe_load((repo / "params.yaml").read_text())["teacher"]["recipe"]
    epochs = math.ceil(recipe["budgets"][-1])  # budgets in epochs: the run lasts its last one
    for rec in teachers:
        assert rec.tags["finch.world_size"] == "2"
        assert sum(map(sum, rec.confusion)) == n_test  # every test image once
        trace = sum(rec.confusion[i][i] for i in range(len(rec.confusion)))
        assert rec.metrics["accuracy"] == pytest.approx(trace / n_test)  # the ranks' predictions gathered in order
        history = repo / f"reports/runs/teacher/default/seed={rec.seed}/history.csv"
        assert len(history.read_text().splitlines()) == 1 + epochs  # header + an epoch each, written once
        assert len(rec.budgets) == len(recipe["budgets"])  # each budget tested once, on the gathered predictions
    assert (repo / "reports/runs/teacher/default/ensemble.json").is_file()
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["finch-smoke"], filter_string="tags.`finch.world_size` = '2'")
    assert sorted(runs["tags.mlflow.runName"]) == ["teacher/seed=0", "teacher/seed=1"]  # one run each


def test_finch_tune_searches_the_teacher_on_validation(smoke_repo):
    """`finch tune` at smoke size on the stage's real inputs: its trials, a table, the best as -S
    options; the trials nested under one MLflow run."""
    import mlflow

    repo, env = smoke_repo
    out = run([sys.executable, "-m", "finch.cli", "tune", "--trials", "3"], repo, env)
    table = pd.read_csv(repo / "reports/tune/teacher-default.csv")
    assert list(table["trial"]) == [0, 1, 2]
    assert table["val_accuracy@1.5ep"].between(0, 1).all()
    assert "dvc exp run -S 'teacher.recipe.budgets=[1.5, 2]'" in out.stdout
    assert "validation accuracy" in (repo / "reports/tune/teacher-default.md").read_text()
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow.db'}")
    trials = mlflow.search_runs(experiment_names=["finch-smoke"], filter_string="tags.`finch.kind` = 'tune_trial'")
    assert len(trials) == 3 and trials["tags.mlflow.parentRunId"].nunique() == 1
