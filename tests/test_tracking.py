"""MLflow sync from run records: idempotent, nothing lost, half-logged runs replaced."""

from pathlib import Path

import pytest

from finch.config import TrackingConfig
from finch.runs import RunKind, RunRecord, find_records
from finch.tracking import KEY_TAG, Tracker, log_runs_safely, sync

DATASETS = [
    {
        "name": "target/train",
        "digest": "0123456789abcdef",
        "source": "data/prepared/target.safetensors",
        "context": "training",
    },
    {
        "name": "target/test",
        "digest": "0123456789abcdef",
        "source": "data/prepared/target.safetensors",
        "context": "testing",
    },
]


def fake_record(root: Path, seed: int, tags: dict | None = None) -> Path:
    record = RunRecord(
        stage="teacher",
        variant="default",
        seed=seed,
        run_key=f"key{seed}",
        run_name=f"teacher/seed={seed}",
        params_hash="h",
        kind=RunKind.CLASSIFIER,
        params={"recipe": {"lr": 0.1}},
        tags={
            "finch.stage": "teacher",
            "finch.variant": "default",
            "finch.seed": str(seed),
            KEY_TAG: f"key{seed}",
            **(tags or {}),
        },
        metrics={"accuracy": 0.5 + seed / 10, "params_total": 10},
        cost={"train_time_s": 1.0},
        best_epoch=2,
        class_names=["a", "b"],
        confusion=[[3, 1], [0, 4]],
        weights=str(root / "missing.safetensors"),
        history=[
            {"epoch": 1, "train_loss": 1.0, "val_loss": 0.9, "val_accuracy": 0.6, "lr": 0.1},
            {"epoch": 2, "train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.8, "lr": 0.05},
        ],
        datasets=DATASETS,
    )
    return record.write(root)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    return TrackingConfig()


def test_sync_logs_missing_runs_once(tmp_path, store):
    for seed in (0, 1):
        fake_record(tmp_path / "runs", seed)
    records = find_records(tmp_path / "runs")
    assert sync(records, store, "test") == {"logged": 2, "already_present": 0, "summaries": 0}
    assert sync(records, store, "test")["logged"] == 0  # idempotent

    tracker = Tracker(store, "test")
    runs = tracker.search()
    assert sorted(r.info.run_name for r in runs) == ["teacher/seed=0", "teacher/seed=1"]
    run = next(r for r in runs if r.info.run_name == "teacher/seed=1")
    assert run.data.metrics["accuracy"] == pytest.approx(0.6)
    assert run.data.params["recipe.lr"] == "0.1"
    assert run.data.tags["finch.seed"] == "1"
    history = tracker.client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.6), (2, 0.8)]
    # tracking only uploads: the record itself; figures are the report layer's, on the summary run
    assert {a.path for a in tracker.client.list_artifacts(run.info.run_id)} == {"record"}


def test_half_logged_run_is_replaced_not_duplicated(tmp_path, store):
    fake_record(tmp_path / "runs", 0)
    tracker = Tracker(store, "test")
    broken = tracker.client.create_run(
        tracker.experiment_id, run_name="teacher/seed=0", tags={"finch.stage": "teacher"}
    )
    tracker.client.set_terminated(broken.info.run_id, "FAILED")
    assert tracker.logged_keys() == set()  # looking deletes nothing ...
    assert len(tracker.search()) == 1
    assert sync(find_records(tmp_path / "runs"), store, "test")["logged"] == 1  # ... sync's explicit step does
    alive = Tracker(store, "test").search()
    assert len(alive) == 1 and alive[0].info.status == "FINISHED"


def test_unreachable_store_only_warns_and_sync_catches_up_later(tmp_path, store, monkeypatch, caplog):
    folder = fake_record(tmp_path / "runs", 0)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    log_runs_safely([folder], store, "test")
    assert "MLflow logging failed" in caplog.text
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert sync(find_records(tmp_path / "runs"), store, "test")["logged"] == 1


def test_summary_run_is_parent_of_its_seed_runs(tmp_path, store):
    import mlflow

    for seed in (0, 1, 2):
        fake_record(tmp_path / "runs", seed)
    records = find_records(tmp_path / "runs")
    summary = [
        {"metric": "accuracy", "mean": 0.6, "std": 0.1, "t_low": 0.4, "t_high": 0.8, "boot_low": 0.5, "boot_high": 0.7}
    ]
    figure = tmp_path / "teacher_default_confusion.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    summaries = [
        {
            "stage": "teacher",
            "variant": "default",
            "rows": summary,
            "member_keys": [r.key for r in records],
            "figures": [figure],
        }
    ]
    assert sync(records, store, "test", summaries)["summaries"] == 1
    assert sync(records, store, "test", summaries)["summaries"] == 0  # idempotent

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["finch-test"])
    parents = runs[runs["tags.finch.kind"] == "summary"]
    assert len(parents) == 1
    parent_id = parents.iloc[0]["run_id"]
    # few, named comparison metrics: the mean and its 95% t interval, nothing else
    logged = {k.removeprefix("metrics."): v for k, v in parents.iloc[0].items() if k.startswith("metrics.")}
    logged = {k: v for k, v in logged.items() if v == v}  # the seed runs' columns are NaN here
    assert logged == pytest.approx({"accuracy_mean": 0.6, "accuracy_ci_low": 0.4, "accuracy_ci_high": 0.8})
    listed = Tracker(store, "test").client.list_artifacts(parent_id, "figures")
    assert [a.path for a in listed] == ["figures/teacher_default_confusion.png"]
    children = runs[runs["tags.mlflow.parentRunId"] == parent_id]
    assert sorted(children["tags.finch.seed"]) == ["0", "1", "2"]
    assert set(children["tags.finch.variant"]) == {"default"}
    # filtering by study, variant and seed works in MLflow's own query language
    one = mlflow.search_runs(
        experiment_names=["finch-test"],
        filter_string="tags.`finch.stage` = 'teacher' AND tags.`finch.seed` = '1'",
    )
    assert len(one) == 1 and one.iloc[0]["tags.mlflow.parentRunId"] == parent_id


def test_logged_uri_hides_credentials(monkeypatch):
    from finch.tracking import shown_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:s3cret-token@mlflow.example.org:5000")
    shown = shown_uri(TrackingConfig())
    assert "s3cret-token" not in shown and "alice" not in shown and shown.endswith("@mlflow.example.org:5000")


# ------------------------------------------------------------------ DVC experiments and the MLflow UI
def test_run_tags_name_the_dvc_experiment_only_under_dvc_exp_run(monkeypatch):
    from finch.runs import run_tags

    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)
    assert not {"dvc.exp_name", "dvc.exp_baseline_rev"} & set(run_tags("teacher", "default", "test"))
    monkeypatch.setenv("DVC_EXP_NAME", "lr-high")  # what dvc exp run sets for every stage command
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "a" * 40)
    tags = run_tags("teacher", "default", "test")
    assert tags["dvc.exp_name"] == "lr-high" and tags["dvc.exp_baseline_rev"] == "a" * 40
    record = RunRecord.create(  # the record keeps them, so a later `finch sync` logs them too
        stage="teacher",
        variant="default",
        seed=0,
        kind=RunKind.CLASSIFIER,
        settings={"lr": 0.1},
        profile="test",
        device="cpu",
        numerics="test numerics",
        metrics={},
        cost={},
    )
    assert record.tags["dvc.exp_name"] == "lr-high" and record.tags["dvc.exp_baseline_rev"] == "a" * 40


def test_summary_run_links_to_the_dvc_experiment_of_its_seed_runs(tmp_path, store):
    experiment = {"dvc.exp_name": "lr-high", "dvc.exp_baseline_rev": "b" * 40}
    for seed in (0, 1):
        fake_record(tmp_path / "runs", seed, tags=experiment)
    records = find_records(tmp_path / "runs")
    row = {"metric": "accuracy", "mean": 0.6, "t_low": 0.4, "t_high": 0.8}
    summaries = [{"stage": "teacher", "variant": "default", "rows": [row], "member_keys": [r.key for r in records]}]
    sync(records, store, "test", summaries)
    runs = {r.info.run_name: r for r in Tracker(store, "test").search()}
    for name in ("teacher/seed=0", "teacher/seed=1", "teacher/summary"):
        assert {k: runs[name].data.tags[k] for k in experiment} == experiment, name
    note = runs["teacher/summary"].data.tags["mlflow.note.content"]
    assert "DVC experiment `lr-high` (baseline `bbbbbbb`)" in note and "dvc exp apply lr-high" in note


def test_experiment_opens_on_its_training_runs(tmp_path, store):
    from finch.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    assert EXPERIMENT_KIND == "custom_model_development"  # MLflow 3's "Machine learning" kind: the runs tab
    tracker = Tracker(store, "test")
    assert tracker.client.get_experiment(tracker.experiment_id).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # an experiment created before Finch set the kind gets it; a kind chosen in the UI is kept
    old = tracker.client.create_experiment("finch-old")
    chosen = tracker.client.create_experiment("finch-chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    Tracker(store, "old")
    Tracker(store, "chosen")
    assert tracker.client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert tracker.client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_seed_runs_show_the_prepared_splits_they_saw_as_datasets(tmp_path, store):
    import json

    fake_record(tmp_path / "runs", 0)
    sync(find_records(tmp_path / "runs"), store, "test")
    (run,) = Tracker(store, "test").search()
    inputs = {
        d.dataset.name: (d.dataset.digest, json.loads(d.dataset.source), {t.key: t.value for t in d.tags})
        for d in run.inputs.dataset_inputs
    }
    assert inputs == {
        d["name"]: (d["digest"], {"uri": d["source"]}, {"mlflow.data.context": d["context"]}) for d in DATASETS
    }


def test_task_data_names_its_splits_by_content_hash(toy_task):
    from dataclasses import replace

    task = replace(toy_task, name="target", content_hash="f" * 64, origin="data/prepared/target.safetensors")
    inputs = task.dataset_inputs()
    assert [(d["name"], d["context"]) for d in inputs] == [
        ("target/train", "training"),
        ("target/val", "validation"),
        ("target/test", "testing"),
    ]
    assert {d["digest"] for d in inputs} == {"f" * 16} and {d["source"] for d in inputs} == {task.origin}


def test_stage_metrics_file_has_each_variants_mean_over_seeds(tmp_path):
    from finch.io import read_json
    from finch.runs import write_stage_metrics

    for seed in (0, 1):
        fake_record(tmp_path / "runs", seed)  # accuracy 0.5 and 0.6
    out = write_stage_metrics(tmp_path / "runs", "teacher", tmp_path / "metrics" / "train_teacher.json")
    assert out == {"teacher": {"default": {"accuracy": {"n": 2, "mean": pytest.approx(0.55)}}}}
    assert read_json(tmp_path / "metrics" / "train_teacher.json") == out
    empty = write_stage_metrics(tmp_path / "runs", "pretrain", tmp_path / "metrics" / "pretrain.json")
    assert empty == {}  # pretrain.weights: timm trains nothing; the declared file still exists


def test_a_training_stage_looks_only_at_its_own_stage_runs(tmp_path, store, monkeypatch):
    """log_runs_safely (a training stage logging what it trained) searches and cleans up its own
    stage's runs only; another stage's half-logged run waits for the aggregate's full sync."""
    tracker = Tracker(store, "test")
    for stage in ("teacher", "student"):  # a crash mid-upload in each stage
        broken = tracker.client.create_run(
            tracker.experiment_id, run_name=f"{stage}/seed=9", tags={"finch.stage": stage}
        )
        tracker.client.set_terminated(broken.info.run_id, "FAILED")
    searches = []
    original = Tracker.search

    def counted(self, filter_string=""):
        searches.append(filter_string)
        return original(self, filter_string)

    monkeypatch.setattr(Tracker, "search", counted)
    log_runs_safely([fake_record(tmp_path / "runs", 0)], store, "test")
    monkeypatch.setattr(Tracker, "search", original)
    assert searches == ["tags.`finch.stage` = 'teacher'"]
    left = {(r.data.tags["finch.stage"], r.info.status) for r in Tracker(store, "test").search()}
    assert left == {("teacher", "FINISHED"), ("student", "FAILED")}
    assert sync(find_records(tmp_path / "runs"), store, "test") == {"logged": 0, "already_present": 1, "summaries": 0}
    assert {r.data.tags["finch.stage"] for r in Tracker(store, "test").search()} == {"teacher"}


def test_stage_names_in_a_search_filter_must_be_identifiers(store):
    with pytest.raises(ValueError, match="stage name"):
        Tracker(store, "test").finch_runs(["teacher' OR '1"])


def test_files_run_is_logged_once_and_a_failed_upload_is_replaced(tmp_path, store, monkeypatch):
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"a figure")
    tracker = Tracker(store, "test")
    real_log_artifact = tracker.client.log_artifact

    def upload_fails(*args, **kwargs):
        raise ConnectionError("store down mid-upload")

    monkeypatch.setattr(tracker.client, "log_artifact", upload_fails)
    with pytest.raises(ConnectionError):
        tracker.log_files_once("explain", {"explain.seed": 0}, [figure])
    (failed,) = tracker.search()
    assert failed.info.status == "FAILED" and KEY_TAG not in failed.data.tags  # never trusted

    monkeypatch.setattr(tracker.client, "log_artifact", real_log_artifact)
    run_id = tracker.log_files_once("explain", {"explain.seed": 0}, [figure])
    assert tracker.log_files_once("explain", {"explain.seed": 0}, [figure]) is None  # same content: logged already
    (run,) = tracker.search()  # the failed attempt is gone
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert (run.data.tags["finch.stage"], run.data.tags["finch.kind"]) == ("explain", "artifacts")
    assert run.data.params == {"explain.seed": "0"}
    assert {a.path for a in tracker.client.list_artifacts(run_id)} == {"figure.png"}
    figure.write_bytes(b"another figure")  # new content, new run
    assert tracker.log_files_once("explain", {"explain.seed": 0}, [figure]) not in (None, run_id)
    assert len(tracker.search()) == 2
