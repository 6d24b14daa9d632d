"""MLflow logging, fed from the per-run records (the source of truth).

:func:`sync` is idempotent: it logs every record whose run key is not yet in MLflow, so
runs restored by DVC's run-cache, or whose logging failed while the tracking server was
down, arrive later. A run gets its ``finch.run_key`` tag only once everything else is
logged, so a half-logged run is never mistaken for a complete one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from finch.config import TrackingConfig, flatten
from finch.io import shared_root
from finch.runs import DVC_EXPERIMENT_ENV, RunRecord, read_record, run_tags

log = logging.getLogger(__name__)
KEY_TAG = "finch.run_key"
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # a run's description in the UI
# MLflow 3's UI opens an experiment by its kind: "genai_development" on the GenAI overview/traces,
# "custom_model_development" ("Machine learning") on the runs table; unset, it asks (mlflow/server/js
# build: ExperimentKind enum and the experiment page's landing-tab effect).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# what a summary run logs per headline metric: the mean over seeds and its Student-t interval
SUMMARY_STATS = {"mean": "mean", "t_low": "ci_low", "t_high": "ci_high"}


def tracking_uri(cfg: TrackingConfig, root: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else ``tracking.uri``, else SQLite at the repository root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri
    return uri or f"sqlite:///{shared_root(root) / 'mlflow.db'}"


def shown_uri(cfg: TrackingConfig, root: Path | None = None) -> str:
    """The tracking URI for log messages, without any ``user:password@`` part."""
    return re.sub(r"//[^/@]*@", "//***@", tracking_uri(cfg, root))


def tracking_failure(err: Exception, cfg: TrackingConfig) -> str:
    """Why logging to MLflow failed, for a warning: the error without any credential in it, and
    what to do when the server refused them (a basic-auth server answers 401, or 403 to a user
    without permission). Credentials come from MLFLOW_TRACKING_USERNAME / _PASSWORD or
    ~/.mlflow/credentials (MLflow reads them; Finch never stores them)."""
    from mlflow.utils.credentials import read_mlflow_creds

    creds = read_mlflow_creds()
    text = re.sub(r"//[^/@\s]*@", "//***@", f"{type(err).__name__}: {err}")
    for secret in (creds.password, os.environ.get("MLFLOW_TRACKING_TOKEN")):
        if secret:
            text = text.replace(secret, "***")
    text = text[:600]
    if re.search(r"\b401\b|Unauthorized|not authenticated", text):
        given = f"those of {creds.username} were refused" if creds.username else "none were given"
        text += (
            f". The tracking server at {shown_uri(cfg)} asks for credentials and {given}: set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or ~/.mlflow/credentials) to your account's"
        )
    elif re.search(r"\b403\b|PERMISSION_DENIED|Permission denied", text):
        text += f". {creds.username or 'This user'} may not write here: ask the server's admin for EDIT on it"
    return text


def experiment_name(cfg: TrackingConfig, profile: str) -> str:
    return f"{cfg.experiment_prefix}-{profile}"


class Tracker:
    """One MLflow experiment, reached through ``MlflowClient`` (no global state)."""

    def __init__(self, cfg: TrackingConfig, profile: str, root: Path | None = None):
        from mlflow.tracking import MlflowClient

        self.cfg = cfg
        self.profile = profile
        self.uri = tracking_uri(cfg, root)
        name = experiment_name(cfg, profile)
        with _store_lock(self.uri):  # MlflowClient opens the store: creates a new SQLite store's tables
            self.client = MlflowClient(tracking_uri=self.uri)
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                artifacts = None
                if self.uri.startswith("sqlite:///") and not (os.environ.get("MLFLOW_TRACKING_URI") or cfg.uri):
                    artifacts = (shared_root(root) / "mlartifacts" / name).as_uri()
                self.experiment_id = self._create_experiment(name, artifacts)
            else:
                self.experiment_id = exp.experiment_id
                if EXPERIMENT_KIND_TAG not in exp.tags:  # created before Finch set it; a kind chosen in the UI stays
                    self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    def _create_experiment(self, name: str, artifacts: str | None) -> str:
        """Create experiment ``name`` (opening on its training runs in the UI), or take the one
        another process created meanwhile (parallel ``dvc queue`` workers logging to one server)."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(
                name, artifact_location=artifacts, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except MlflowException:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def search(self, filter_string: str = "") -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string=filter_string, max_results=1000, page_token=token
            )
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def finch_runs(self, stages: list[str] | None = None) -> list:
        """This experiment's Finch runs; with ``stages``, only theirs (one search each: a training
        stage that logs its own runs need not load every other stage's)."""
        if stages is None:
            return self.search("tags.`finch.stage` LIKE '%'")
        for stage in stages:  # stage names are identifiers; anything else would break the filter's quoting
            if not re.fullmatch(r"\w+", stage):
                raise ValueError(f"stage name {stage!r}: expected letters, digits and underscores only")
        return [run for stage in stages for run in self.search(f"tags.`finch.stage` = '{stage}'")]

    @staticmethod
    def complete_runs(runs: list) -> dict:
        """Run key → run, for completely logged runs (finished, with their key tag)."""
        complete = {}
        for run in runs:
            key = run.data.tags.get(KEY_TAG)
            if key and run.info.status == "FINISHED":
                complete[key] = run
        return complete

    def logged_runs(self) -> dict:
        """Run key → run, for completely logged runs (finished, with their key tag)."""
        return self.complete_runs(self.finch_runs())

    def logged_keys(self) -> set[str]:
        return set(self.logged_runs())

    def delete_incomplete_runs(self, runs: list | None = None) -> int:
        """Delete Finch runs that were never completely logged (a crash or an unreachable store
        mid-upload: no key tag, or not finished), so a re-log does not show a run twice.
        Runs still in progress are left alone. ``runs``: this experiment's Finch runs if already
        fetched (:meth:`finch_runs`). Returns how many were deleted."""
        deleted = 0
        for run in self.finch_runs() if runs is None else runs:
            complete = run.data.tags.get(KEY_TAG) and run.info.status == "FINISHED"
            if not complete and run.info.status != "RUNNING":
                self.client.delete_run(run.info.run_id)
                deleted += 1
        return deleted

    @contextlib.contextmanager
    def _keyed_run(self, name: str, tags: dict[str, str], key: str) -> Iterator[str]:
        """A new run for the caller to fill; then its key tag, set last, and FINISHED. A failure
        while filling it marks it FAILED without a key (:meth:`delete_incomplete_runs` removes it)."""
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        try:
            yield run_id
            self.client.set_tag(run_id, KEY_TAG, key)
            self.client.set_terminated(run_id, "FINISHED")
        except Exception:
            self.client.set_terminated(run_id, "FAILED")
            raise

    def log_record(self, rec: RunRecord) -> str:
        """Upload one run record: params, tags, per-epoch curves, metrics, its artifacts and weights."""
        from mlflow.entities import Metric, Param

        tags = {k: v for k, v in rec.tags.items() if k != KEY_TAG}
        with self._keyed_run(rec.run_name, tags, rec.run_key) as run_id:
            now = int(time.time() * 1000)
            metrics = [
                Metric(k, float(v), now, int(row["epoch"]))
                for row in rec.history
                for k, v in row.items()
                if k != "epoch"
            ]
            # the budget curve: each budget's accuracies at its step (optimizer steps), side by side in the UI
            metrics += [
                Metric(f"budget.{k}", float(row[k]), now, int(row["steps"]))
                for row in rec.budgets
                for k in ("val_accuracy", "test_accuracy")
                if k in row
            ]
            metrics += [Metric(k, float(v), now, 0) for k, v in {**rec.metrics, **rec.cost}.items()]
            if rec.best_epoch is not None:
                metrics.append(Metric("best_epoch", float(rec.best_epoch), now, 0))
            params = [Param(k, str(v)[:6000]) for k, v in flatten(rec.params).items()]
            _log_batches(self.client, run_id, metrics, params)
            if rec.datasets:  # the runs table's Dataset column: which prepared splits the run saw
                self.client.log_inputs(run_id, datasets=[_dataset_input(d) for d in rec.datasets])
            for name, folder in rec.artifacts.items():  # e.g. the GAN's per-epoch sample grids
                if Path(folder).is_dir():
                    self.client.log_artifacts(run_id, folder, name)
            if rec.path is not None:
                self.client.log_artifact(run_id, str(rec.path / "record.json"), "record")
            weights = Path(rec.weights) if rec.weights else None  # relative to the workspace the stage ran in
            if self.cfg.log_weights and weights is not None and weights.is_file():
                self.client.log_artifact(run_id, str(weights), "weights")
        return run_id

    def log_files_once(self, stage: str, params: dict, files: list[Path]) -> str | None:
        """One run of ``stage`` (variant ``default``, kind ``artifacts``) holding ``params`` and
        ``files``, keyed by their content (:func:`files_key`): returns its id, or None where a
        complete run with that key is logged already, so a re-run logs nothing new. Half-logged
        runs of ``stage`` are deleted first, so a failed attempt is replaced, not shown twice."""
        from mlflow.entities import Param

        key = files_key(files, params)
        runs = self.finch_runs([stage])
        self.delete_incomplete_runs(runs)
        if key in self.complete_runs(runs):
            return None
        tags = run_tags(stage, "default", self.profile, **{"finch.kind": "artifacts"})
        with self._keyed_run(stage, tags, key) as run_id:
            _log_batches(self.client, run_id, [], [Param(k, str(v)) for k, v in params.items()])
            for path in files:
                self.client.log_artifact(run_id, str(path))
        return run_id

    def log_summary(
        self,
        stage: str,
        variant: str,
        summary_rows: list[dict],
        member_keys: list[str],
        present: dict,
        figures: list[Path] = (),
        experiment: dict[str, str] | None = None,
    ) -> bool:
        """One summary run per (stage, variant): for each metric of ``summary_rows`` (the aggregate
        passes the headline metrics) ``<metric>_mean``, ``<metric>_ci_low`` and ``<metric>_ci_high``
        (the Student-t interval of the mean over seeds), and the variant's figures (rendered by the
        report layer); the seed runs become its children (``mlflow.parentRunId``), so the UI nests
        them. ``experiment``: the DVC experiment tags its seed runs share (:func:`shared_experiment`),
        also written into its description.

        ``present``: run key → run, from :meth:`logged_runs`. Returns whether a summary was created.
        """
        from mlflow.entities import Metric

        from finch.runs import run_key

        key = run_key(stage, variant, -1, ",".join(sorted(member_keys)))
        created = key not in present
        if created:
            name = stage if variant == "default" else f"{stage}/{variant}"
            extra = {"finch.kind": "summary", "finch.seeds": str(len(member_keys)), **(experiment or {})}
            tags = run_tags(stage, variant, self.profile, **extra)
            note = experiment_note(tags)
            if note:
                tags[NOTE_TAG] = note
            run = self.client.create_run(self.experiment_id, run_name=f"{name}/summary", tags=tags)
            parent_id = run.info.run_id
            now = int(time.time() * 1000)
            metrics = []
            for r in summary_rows:
                for stat, suffix in SUMMARY_STATS.items():
                    value = r[stat]
                    if value == value:  # skip NaN (one seed: no interval)
                        metrics.append(Metric(f"{r['metric']}_{suffix}", float(value), now, 0))
            _log_batches(self.client, parent_id, metrics, [])
            for figure in figures:
                if Path(figure).is_file():
                    self.client.log_artifact(parent_id, str(figure), "figures")
            self.client.set_tag(parent_id, KEY_TAG, key)
            self.client.set_terminated(parent_id, "FINISHED")
        else:
            parent_id = present[key].info.run_id
        for member in member_keys:
            child = present.get(member)
            if child is not None and child.data.tags.get(PARENT_TAG) != parent_id:
                self.client.set_tag(child.info.run_id, PARENT_TAG, parent_id)
        return created


def files_key(files: list[Path], params: dict) -> str:
    """The run key of a run holding ``files`` and ``params`` (as MLflow keeps them: strings):
    sha256 of both, first 16 hex digits."""
    h = hashlib.sha256(json.dumps({k: str(v) for k, v in params.items()}, sort_keys=True).encode())
    for path in files:
        h.update(Path(path).read_bytes())
    return h.hexdigest()[:16]


def _dataset_input(dataset: dict[str, str]):
    """A record's dataset (:meth:`finch.data.splits.TaskData.dataset_inputs`) as MLflow's input."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source = json.dumps({"uri": dataset["source"]})  # MLflow's "local" dataset source
    return DatasetInput(
        Dataset(name=dataset["name"], digest=dataset["digest"], source_type="local", source=source),
        tags=[InputTag(MLFLOW_DATASET_CONTEXT, dataset["context"])],
    )


def shared_experiment(records: list[RunRecord]) -> dict[str, str]:
    """The DVC experiment tags of ``records`` (a summary's seed runs): each tag's values,
    ", "-joined where the runs came from different experiments."""
    out = {}
    for tag in DVC_EXPERIMENT_ENV:
        values = sorted({rec.tags[tag] for rec in records if tag in rec.tags})
        if values:
            out[tag] = ", ".join(values)
    return out


def experiment_note(tags: dict[str, str]) -> str:
    """A run description naming its DVC experiment and how to reach it; empty outside one."""
    name = tags.get("dvc.exp_name")
    if not name:
        return ""
    baseline = tags.get("dvc.exp_baseline_rev", "?")
    return (
        f"DVC experiment `{name}` (baseline `{baseline[:7]}`): `dvc exp show` compares it with the others, "
        f"`dvc exp apply {name.split(', ')[0]}` restores its workspace."
    )


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise opening a SQLite store across processes (no-op for other stores).

    Parallel ``dvc queue`` workers share the main workspace's mlflow.db, and MLflow creates and
    migrates a new SQLite store's tables without a lock: of two processes that open a fresh store
    at once, one fails (``table experiments already exists``) and its runs are not logged.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(uri[len("sqlite:///") :].split("?", 1)[0]).resolve()
    digest = hashlib.sha256(str(db).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"finch-mlflow-{digest}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _log_batches(client, run_id: str, metrics: list, params: list) -> None:
    """log_batch within MLflow's limits (1000 metrics, 100 params per call)."""
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i : i + 1000])
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i : i + 100])


def sync(
    records: list[RunRecord],
    cfg: TrackingConfig,
    profile: str,
    summaries: list[dict] | None = None,
    *,
    own_stages_only: bool = False,
) -> dict[str, int]:
    """Log every record (and summary) not yet in MLflow; return what was logged.

    ``summaries``: dicts with stage, variant, rows (summary rows), member_keys and figures (paths).
    ``own_stages_only``: look at (and clean up) only the runs of the records' own stages, not the
    whole experiment's (a training stage logging what it trained; the aggregate's sync sees all).
    """
    tracker = Tracker(cfg, profile)
    # one search serves both (the whole experiment's: ~0.7 s on the smoke's SQLite store)
    runs = tracker.finch_runs(sorted({rec.stage for rec in records}) if own_stages_only else None)
    removed = tracker.delete_incomplete_runs(runs)
    if removed:
        log.info("MLflow: deleted %d incompletely logged run(s); they are logged again from their records", removed)
    present = tracker.complete_runs(runs)
    missing = [rec for rec in records if rec.key not in present]
    for rec in missing:
        tracker.log_record(rec)
    if summaries and missing:  # the summaries adopt the runs just logged
        present = tracker.logged_runs()
    by_key = {rec.key: rec for rec in records}
    n_summaries = sum(
        tracker.log_summary(
            s["stage"],
            s["variant"],
            s["rows"],
            s["member_keys"],
            present,
            s.get("figures", []),
            experiment=shared_experiment([by_key[k] for k in s["member_keys"] if k in by_key]),
        )
        for s in summaries or []
    )
    return {"logged": len(missing), "already_present": len(records) - len(missing), "summaries": n_summaries}


def log_runs_safely(folders: list[Path], cfg: TrackingConfig, profile: str) -> None:
    """Log freshly trained runs; a failure only warns (the aggregate's sync retries)."""
    if not cfg.enabled or not folders:  # nothing trained here (or a non-zero torchrun rank)
        return
    try:
        counts = sync([read_record(f) for f in folders], cfg, profile, own_stages_only=True)
        log.info("MLflow: logged %d run(s) to %s", counts["logged"], shown_uri(cfg))
    except Exception as err:  # tracking must never cost a finished training run
        log.warning(
            "MLflow logging failed (%s); the results are safe in reports/runs and the "
            "aggregate stage (or `finch sync`) will log them when the store is reachable",
            tracking_failure(err, cfg),
        )
