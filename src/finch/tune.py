"""``finch tune``: an Optuna search over one variant's settings, judged on the validation split.

A trial is one run of the variant named by ``tune.stage`` / ``tune.variant``: the stage's own
plan builds it from params.yaml with the trial's values (and ``tune.fixed``) set, and it trains
through the one engine on ``tune.seed``'s train/validation split. The test split is sealed
(:class:`SealedSplit`): a trial cannot read it. With a ``wsd`` recipe every budget but the last
is a decay branch; its validation accuracy is reported to the trial there, and the pruner
(successive halving or Hyperband) may stop the trial. The study lives in an SQLite file under
``.finch/tune/``: a killed search resumes, running the trial it was in again with the same
values. Every trial is an MLflow run nested under one parent run per search. Output:
``reports/tune/<stage>-<variant>.csv`` / ``.md`` (trial, values, validation accuracy per budget)
with the best trial's values as ``-S`` options and as a profile fragment.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from finch.config import FinchConfig, SearchDimension, TuneConfig, config_hash, deep_merge, parse_params
from finch.errors import ConfigError, NonFiniteLossError

log = logging.getLogger(__name__)
TUNE_ROOT = Path(".finch/tune")  # the studies' SQLite storage (resume)
REPORT_ROOT = Path("reports/tune")
STAGE_PLANS = {
    "teacher": "finch.pipeline.train_teacher:plan",
    "student": "finch.pipeline.train_student:plan",
    "finetune": "finch.pipeline.finetune:plan",
    "augmented": "finch.pipeline.train_augmented:plan",
}
# settings that do not change a trial's numbers: a search resumes across them
_NOT_DEFINING = {"tune": {"trials"}, "runtime": {"workers", "progress"}, "tracking": None}


class SealedSplitError(RuntimeError):
    """A search touched the test split: the design is chosen on validation only."""


class SealedSplit:
    """Stands in for the test split while a search runs: any use of it raises."""

    def __getattr__(self, name: str):
        if name.startswith("__"):  # copy/pickle protocols probe these
            raise AttributeError(name)
        raise SealedSplitError(f"finch tune read the test split ({name}); a search sees train and validation only")

    def __len__(self) -> int:
        raise SealedSplitError("finch tune read the test split (len); a search sees train and validation only")


def nested(dotted: dict[str, Any]) -> dict:
    """``{"a.b.c": 1}`` → ``{"a": {"b": {"c": 1}}}``."""
    out: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def with_values(cfg: FinchConfig, values: dict[str, Any], where: str = "tune") -> FinchConfig:
    """``cfg`` with ``values`` (dotted params.yaml keys) set, validated as params.yaml is: an
    unknown key or a value out of range raises :class:`ConfigError` naming it."""
    merged = deep_merge(cfg.model_dump(mode="json"), nested(values))
    return parse_params(merged, f"params.yaml with {where}")


def study_name(cfg: FinchConfig) -> str:
    """``<profile>-<stage>-<variant>-<hash>``: the hash covers every setting that defines a
    trial's numbers (not ``tune.trials``), so a search resumes only into the same design."""
    data = cfg.model_dump(mode="json")
    for section, keys in _NOT_DEFINING.items():
        if keys is None:
            data.pop(section, None)
        else:
            data[section] = {k: v for k, v in data[section].items() if k not in keys}
    t = cfg.tune
    return f"{cfg.profile}-{t.stage}-{t.variant}-{config_hash(data)[:8]}"


def planned_variant(cfg: FinchConfig, device):
    """The :class:`~finch.runner.PlannedVariant` the search trains: ``tune.variant`` of the
    stage's plan, built from ``cfg``."""
    from finch.runner import resolve_plan

    t = cfg.tune
    planned = resolve_plan(STAGE_PLANS[t.stage])(cfg, device)
    by_name = {pv.variant.name: pv for pv in planned}
    if t.variant not in by_name:
        raise ConfigError(
            f"params.yaml: tune.variant is {t.variant!r}, not a variant of stage {t.stage} as params.yaml "
            f"plans it ({', '.join(by_name)}); name one of these"
        )
    return by_name[t.variant]


def check_search(cfg: FinchConfig, device) -> None:
    """Fail before any training when the search cannot run or cannot mean anything: a key that
    params.yaml does not take, a value out of its range, a key that does not change the searched
    variant's run, or a variant that does not train through the engine."""
    t = cfg.tune
    base = with_values(cfg, t.fixed, "tune.fixed")
    pv = planned_variant(base, device)
    variant = pv.variant
    if variant.fit is not None or variant.recipe.kfold.k >= 2:
        raise ConfigError(
            f"params.yaml: tune.variant {t.variant!r} of stage {t.stage} is not trained by the engine "
            "(a closed-form probe or a k-fold ensemble); search another variant"
        )
    reference = config_hash(variant.settings)
    for key, dim in t.space.items():
        ends = dim.choices if dim.choices is not None else [dim.low, dim.high]
        hashes = set()
        for value in ends:
            try:  # one merge from params.yaml (a fixed null, e.g. a patch size, unsets what it fills in)
                trial_cfg = with_values(cfg, {**t.fixed, key: value}, f"tune.space.{key} = {value!r}")
            except ConfigError as err:
                raise ConfigError(f"tune.space.{key}: cannot take {value!r}:\n{err}") from None
            hashes.add(config_hash(planned_variant(trial_cfg, device).variant.settings))
        if hashes == {reference} and len(ends) > 1:
            raise ConfigError(
                f"params.yaml: tune.space.{key} does not change {t.stage}/{t.variant}'s run at any of {ends}; "
                f"search a key of the {t.stage} stage (e.g. {t.stage}.recipe.optimizer.lr)"
            )
    if t.pruner != "none" and len(variant.recipe.budgets) < 2:
        log.warning(
            "tune: %s/%s's recipe has %s budget(s): no decay branch to prune a trial at; set two or more "
            "budgets in tune.fixed (e.g. %s.recipe.budgets: [5, 10, 20])",
            t.stage,
            t.variant,
            len(variant.recipe.budgets),
            t.stage,
        )


def _plain(value) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _encoded(dim: SearchDimension) -> list | None:
    """Choices as Optuna takes them: plain values as they are; lists and mappings (budgets, a
    tokenizer) as JSON text."""
    if all(_plain(c) for c in dim.choices):
        return None
    return [json.dumps(c, sort_keys=True) for c in dim.choices]


def decoded(params: dict[str, Any], space: dict[str, SearchDimension]) -> dict[str, Any]:
    """A trial's Optuna params as params.yaml values (JSON-encoded choices decoded)."""
    out = {}
    for key, value in params.items():
        dim = space.get(key)
        encoded = dim is not None and dim.choices is not None and _encoded(dim) is not None
        out[key] = json.loads(value) if encoded else value
    return out


def suggest(trial, space: dict[str, SearchDimension]) -> dict[str, Any]:
    """The trial's value of every searched key."""
    values = {}
    for key, dim in space.items():
        if dim.choices is not None:
            encoded = _encoded(dim)
            if encoded is None:
                values[key] = trial.suggest_categorical(key, dim.choices)
            else:
                values[key] = json.loads(trial.suggest_categorical(key, encoded))
        elif dim.integer:
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log)
        else:
            values[key] = trial.suggest_float(key, float(dim.low), float(dim.high), step=dim.step, log=dim.log)
            if dim.step is not None:  # k * step in floats: 0.15000000000000002 → 0.15
                values[key] = round(values[key], 12)
    return values


@dataclass
class Search:
    """What every trial of one search shares."""

    cfg: FinchConfig  # params.yaml (each trial sets tune.fixed and its values on it, in one merge)
    device: Any
    tracker: Any  # TuneTracker or None

    def objective(self, trial) -> float:
        """Train the variant with the trial's values; its validation accuracy at the last budget."""
        import optuna

        from finch.study import own_split
        from finch.train.engine import budget_steps, fit
        from finch.train.runtime import seed_everything

        t = self.cfg.tune
        values = suggest(trial, t.space)
        cfg = with_values(self.cfg, {**t.fixed, **values}, f"trial {trial.number}'s values")
        pv = planned_variant(cfg, self.device)
        variant = pv.variant
        data = replace(pv.data, test=SealedSplit())
        if own_split(variant, cfg):
            data = data.resplit(t.seed)
        run_id = self.tracker.start_trial(trial.number, values) if self.tracker else None
        budgets: list[dict] = []
        # a budget's epochs as the recipe states them: of the stage's reference set (train_augmented:
        # the real images), not of the trial's own training set
        _, per_epoch = budget_steps(variant.recipe, variant.budget_reference or len(data.train))

        def budget_row(row: dict) -> dict:
            return {"steps": row["steps"], "epochs": row["steps"] / per_epoch} | {
                k: row[k] for k in ("val_accuracy", "val_loss")
            }

        def at_budget(model, row: dict) -> dict:
            budgets.append(budget_row(row))
            trial.set_user_attr("budgets", budgets)
            trial.report(row["val_accuracy"], step=int(row["steps"]))
            if self.tracker:
                self.tracker.log_budget(run_id, row)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned at {budgets[-1]['epochs']:g} epochs (val_accuracy {row['val_accuracy']:.4f})"
                )
            return {}

        started = time.perf_counter()
        try:
            seed_everything(t.seed)
            model = variant.build_model(t.seed)
            objective = variant.objective(data, t.seed) if variant.objective else None
            result = fit(
                model,
                data,
                variant.recipe,
                seed=t.seed,
                device=self.device,
                objective=objective,
                progress=cfg.runtime.progress,
                desc=f"trial {trial.number}",
                on_budget=at_budget,
                budget_reference=variant.budget_reference,
            )
        except optuna.TrialPruned:
            self._end(trial, run_id, "KILLED", started)
            raise
        except KeyboardInterrupt:  # a kill: the resumed search runs this trial again
            trial.set_user_attr("interrupted", True)
            self._end(trial, run_id, "KILLED", started)
            raise
        except Exception as err:  # a failed trial (see run_search: some errors end the search)
            trial.set_user_attr("error", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            self._end(trial, run_id, "FAILED", started)
            raise
        if result.budgets:
            last = result.budgets[-1]
            budgets.append(budget_row(last))
            if self.tracker:
                self.tracker.log_budget(run_id, last)
            value = last["val_accuracy"]
        else:  # no budgets: the best validation epoch, as the stage would keep it
            value = result.history[result.best_epoch - 1]["val_accuracy"]
            budgets.append({"steps": None, "epochs": result.best_epoch, "val_accuracy": value})
        trial.set_user_attr("budgets", budgets)
        self._end(trial, run_id, "FINISHED", started)
        return value

    def _end(self, trial, run_id, status: str, started: float) -> None:
        seconds = time.perf_counter() - started
        trial.set_user_attr("train_time_s", seconds)
        if self.tracker:
            self.tracker.end_trial(run_id, status, seconds)


def run_search(cfg: FinchConfig, device, trials: int | None = None, storage_root: Path = TUNE_ROOT):
    """Run (or resume) the search params.yaml's ``tune`` section describes until ``trials``
    (default ``tune.trials``) trials have finished; returns the Optuna study. One search per
    storage file at a time (a lock); trials a kill interrupted run again first."""
    import optuna
    from filelock import FileLock, Timeout

    t = cfg.tune
    trials = trials or t.trials
    check_search(cfg, device)
    base = with_values(cfg, t.fixed, "tune.fixed")
    name = study_name(cfg)
    storage_root.mkdir(parents=True, exist_ok=True)
    db = storage_root / f"{name}.db"
    lock = FileLock(f"{db}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise ConfigError(f"{db}: another `finch tune` is running this search; wait for it, or stop it") from None
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction="maximize",
            sampler=_sampler(t),
            pruner=_pruner(base, planned_variant(base, device)),
            load_if_exists=True,
        )
        retried = requeue_interrupted(study, storage)
        done = finished(study)
        log.info(
            "tune: search %s (%s): %d of %d trials finished%s",
            name,
            db,
            done,
            trials,
            f"; running {retried} interrupted trial(s) again first" if retried else "",
        )
        tracker = TuneTracker.open(cfg, name) if cfg.tracking.enabled else None
        search = Search(cfg, device, tracker)

        def after_trial(study, trial) -> None:
            n = finished(study)
            best = _best(study)
            log.info(
                "tune: trial %d %s (%d/%d): %s | best so far: trial %s, %s",
                trial.number,
                _state_text(trial),
                n,
                trials,
                _values_text(decoded(trial.params, t.space)),
                best.number if best else "-",
                f"{best.value:.4f}" if best else "-",
            )
            write_report(study, cfg)
            if n >= trials:
                study.stop()

        if done < trials:
            # a trial whose values diverge, or cannot train (budgets that come to the same steps at its batch
            # size), is a failed trial: the search goes on
            study.optimize(search.objective, callbacks=[after_trial], catch=(NonFiniteLossError, ConfigError))
        write_report(study, cfg)
        return study
    finally:
        lock.release()


def _sampler(t: TuneConfig):
    import optuna

    if t.sampler == "grid":
        grid = {key: _encoded(dim) or dim.choices for key, dim in t.space.items()}
        return optuna.samplers.GridSampler(grid, seed=t.sampler_seed)
    return optuna.samplers.TPESampler(seed=t.sampler_seed)


def _pruner(cfg: FinchConfig, pv):
    """Successive halving / Hyperband over the budget branches, in optimizer steps: the first
    rung at the first budget; no pruning without two budgets."""
    import optuna

    from finch.study import own_split
    from finch.train.engine import budget_steps

    t, recipe = cfg.tune, pv.variant.recipe
    if t.pruner == "none" or len(recipe.budgets) < 2:
        return optuna.pruners.NopPruner()
    data = pv.data.resplit(t.seed) if own_split(pv.variant, cfg) else pv.data
    steps, _ = budget_steps(recipe, pv.variant.budget_reference or len(data.train))
    if t.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=steps[0], max_resource=steps[-1], reduction_factor=t.reduction_factor
        )
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=steps[0], reduction_factor=t.reduction_factor)


def requeue_interrupted(study, storage) -> int:
    """Trials a kill left unfinished (still RUNNING after a hard kill, or FAIL after an
    interrupt), each queued again with its values, once; returns how many."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    count = 0
    for t in trials:
        if t.state == TrialState.RUNNING:  # no search runs (we hold the lock): its process died
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)  # (a finished trial takes no attrs)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        elif not (t.state == TrialState.FAIL and t.user_attrs.get("interrupted")):
            continue
        if t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
            count += 1
    return count


def finished(study) -> int:
    """Trials that count towards ``tune.trials``: complete, pruned, or failed on their own values
    (not interrupted by a kill: those run again)."""
    from optuna.trial import TrialState

    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return sum(t.state in done and not t.user_attrs.get("interrupted") for t in study.get_trials(deepcopy=False))


def _best(study):
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    return max(complete, key=lambda t: (t.value, -t.number)) if complete else None


def _state_text(trial) -> str:
    budgets = trial.user_attrs.get("budgets", [])
    last = budgets[-1] if budgets else None
    at = f" at {last['epochs']:g} epochs, val_accuracy {last['val_accuracy']:.4f}" if last else ""
    if trial.user_attrs.get("interrupted"):
        return "interrupted (runs again on resume)"
    if trial.user_attrs.get("error"):
        return f"failed: {trial.user_attrs['error']}"
    return {"COMPLETE": "complete", "PRUNED": "pruned"}.get(trial.state.name, trial.state.name.lower()) + at


def _values_text(values: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in values.items())


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else _yaml_scalar(value)


# --- report ---------------------------------------------------------------------------------


def _shown(params: dict, space: dict) -> dict:
    """Values as a table cell shows them: lists and mappings as compact YAML."""
    return {k: v if _plain(v) and v is not None else _yaml_scalar(v) for k, v in decoded(params, space).items()}


def trials_table(study, space: dict[str, SearchDimension]) -> list[dict]:
    """One row per trial: number, state, values, validation accuracy per budget (epochs), time."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state.name in {"WAITING"}:
            continue
        row = {"trial": trial.number, "state": _state_name(trial), **_shown(trial.params, space)}
        for b in trial.user_attrs.get("budgets", []):
            row[f"val_accuracy@{b['epochs']:g}ep"] = b["val_accuracy"]
        row["value"] = trial.value if trial.state.name == "COMPLETE" else math.nan
        row["train_time_s"] = trial.user_attrs.get("train_time_s", math.nan)
        rows.append(row)
    return rows


def _state_name(trial) -> str:
    if trial.user_attrs.get("interrupted"):
        return "interrupted"
    return trial.state.name.lower()


def best_values(study, cfg: FinchConfig) -> dict[str, Any] | None:
    """The best complete trial's values, with ``tune.fixed``: what a profile would set."""
    best = _best(study)
    return None if best is None else {**cfg.tune.fixed, **decoded(best.params, cfg.tune.space)}


def set_options(values: dict[str, Any]) -> str:
    """``dvc exp run -S ...`` options that set ``values``."""
    return " ".join(f"-S '{k}={_yaml_scalar(v)}'" for k, v in values.items())


def _yaml_scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _epochs_of(column: str) -> float:
    return float(column.removeprefix("val_accuracy@").removesuffix("ep"))


def _search_text(t: TuneConfig) -> dict:
    """The tune section as a report shows it: each dimension with only what it sets."""
    data = t.model_dump(mode="json")
    data["space"] = {key: dim.model_dump(mode="json", exclude_defaults=True) for key, dim in t.space.items()}
    return data


def write_report(study, cfg: FinchConfig, root: Path = REPORT_ROOT) -> tuple[Path, Path]:
    """``<stage>-<variant>.csv`` (every trial) and ``.md`` (the table, the best trial's values as
    ``-S`` options and a profile fragment) under ``root``."""
    import pandas as pd

    t = cfg.tune
    root.mkdir(parents=True, exist_ok=True)
    stem = root / f"{t.stage}-{t.variant}"
    table = pd.DataFrame(trials_table(study, t.space))
    budget_columns = sorted((c for c in table.columns if c.startswith("val_accuracy@")), key=_epochs_of)
    first = [c for c in table.columns if c not in budget_columns and c not in ("value", "train_time_s")]
    table = table[first + budget_columns + [c for c in ("value", "train_time_s") if c in table.columns]]
    table.to_csv(stem.with_suffix(".csv"), index=False, float_format="%.6g")
    best = _best(study)
    values = best_values(study, cfg)
    lines = [
        f"# Search: {t.stage} / {t.variant}",
        "",
        f"Optuna study `{study.study_name}` (storage `{TUNE_ROOT}/{study.study_name}.db`): {t.sampler} sampler "
        f"(seed {t.sampler_seed}), pruner `{t.pruner}` "
        + (
            f"(keeps 1 in {t.reduction_factor} at each budget branch). "
            if t.pruner != "none"
            else "(every trial runs to its end). "
        )
        + f"Every trial trains seed {t.seed} on that seed's train/validation split; the numbers are "
        "**validation accuracy** at the end of each budget's decay. The test split was not read.",
        "",
        "The search (params.yaml's `tune` section):",
        "",
        "```yaml",
        yaml.safe_dump({"tune": _search_text(t)}, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    if not table.empty:
        shown = table.rename(columns={k: k.split(".", 2)[-1] for k in t.space})
        lines += [shown.to_markdown(index=False, floatfmt=".4g"), ""]
    if best is not None:
        lines += [
            f"Best: trial {best.number}, validation accuracy {best.value:.4f}. As options of `dvc exp run`:",
            "",
            "```",
            f"dvc exp run {set_options(values)}",
            "```",
            "",
            "As a profile fragment (`profiles/<name>.yaml`, `extends: " + cfg.profile + "`):",
            "",
            "```yaml",
            yaml.safe_dump(nested(values), sort_keys=False).rstrip(),
            "```",
        ]
    else:
        lines.append("No trial has completed yet.")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return stem.with_suffix(".csv"), stem.with_suffix(".md")


# --- MLflow ---------------------------------------------------------------------------------


class TuneTracker:
    """One MLflow parent run per search (found again on resume); each trial a nested run."""

    def __init__(self, tracker, parent_id: str):
        self.tracker, self.client, self.parent_id = tracker, tracker.client, parent_id

    @classmethod
    def open(cls, cfg: FinchConfig, name: str) -> TuneTracker | None:
        from mlflow.entities import Param

        from finch.config import flatten
        from finch.runs import run_tags
        from finch.tracking import Tracker

        try:
            tracker = Tracker(cfg.tracking, cfg.profile)
            found = tracker.search(f"tags.`finch.tune_study` = '{name}' and tags.`finch.kind` = 'tune'")
            if found:
                return cls(tracker, found[0].info.run_id)
            t = cfg.tune
            tags = run_tags(t.stage, t.variant, cfg.profile, **{"finch.kind": "tune", "finch.tune_study": name})
            run = tracker.client.create_run(tracker.experiment_id, run_name=f"tune/{t.stage}/{t.variant}", tags=tags)
            params = [Param(f"tune.{k}", str(v)[:6000]) for k, v in flatten(t.model_dump(mode="json")).items()]
            tracker.client.log_batch(run.info.run_id, params=params)
            return cls(tracker, run.info.run_id)
        except Exception as err:  # a tracking store that is down must not stop the search
            log.warning("tune: MLflow unavailable (%s); trials are logged to the study's storage only", err)
            return None

    def start_trial(self, number: int, values: dict) -> str:
        from mlflow.entities import Param

        from finch.tracking import PARENT_TAG

        run = self.client.create_run(
            self.tracker.experiment_id,
            run_name=f"tune trial {number}",
            tags={PARENT_TAG: self.parent_id, "finch.kind": "tune_trial", "finch.trial": str(number)},
        )
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in values.items()])
        return run.info.run_id

    def log_budget(self, run_id: str, row: dict) -> None:
        for key in ("val_accuracy", "val_loss"):
            self.client.log_metric(run_id, f"budget.{key}", float(row[key]), step=int(row["steps"]))

    def end_trial(self, run_id: str, status: str, seconds: float) -> None:
        self.client.log_metric(run_id, "train_time_s", seconds)
        self.client.set_terminated(run_id, status)
