"""A stage's runs as jobs of a SLURM job array, through submitit (``runtime.executor: slurm``).

:func:`finch.runner.train_planned` schedules runs the same way whatever carries them out; here
it hands them to :class:`SubmititPool`, which looks like the process pool to it: every run that
is ready goes out as one job of a job array (``runtime.slurm``: partition, GPUs, CPUs, memory,
time limit, array parallelism), a poller thread turns finished jobs into futures, and the
stage logs its progress. A job

- rebuilds the stage's plan from its function (like a pool worker) and carries out its one run
  with :func:`finch.study.execute`, so its numbers are the process pool's (same seed, same
  ``runtime.threads``); it writes the run's weights and record on the shared filesystem and
  returns the test probabilities; the stage writes the seed ensembles and logs MLflow as always;
- runs DDP over its node's GPUs when ``gpus_per_node`` > 1 (one task per GPU, submitit's
  distributed environment in place of torchrun's);
- is requeued by SLURM on preemption or time-out (submitit's checkpointing), and resubmitted by
  the stage, up to ``max_resubmits`` times, when it dies without a result (killed, node lost);
  either way the run resumes from its last epoch checkpoint. A job that fails with an error
  fails the stage, naming the run and its log files.

submitit's folder (``runtime.slurm.folder``) holds its pickles of the jobs and their results:
they are the one exception to "never unpickle" (the folder is created private to the user,
mode 0700). ``cluster: local`` uses submitit's local executor, the same path without sbatch
(the tests use it).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import Counter
from concurrent.futures import Executor, Future
from pathlib import Path

from finch.config import FinchConfig
from finch.errors import ConfigError

log = logging.getLogger(__name__)


class ClusterTask:
    """What a job runs: one run of the stage's plan (rebuilt from ``plan_ref`` in the job).
    Requeued by submitit with the same run on preemption or time-out (:meth:`checkpoint`)."""

    def __init__(self, plan_ref: str, cfg_data: dict):
        self.plan_ref, self.cfg_data = plan_ref, cfg_data

    def __call__(self, run):
        import submitit

        from finch import distributed, runner

        if submitit.JobEnvironment().num_tasks > 1:  # DDP over the job's tasks (one per GPU), as under torchrun
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        runner._start_worker(self.plan_ref, self.cfg_data)
        try:
            return runner._execute_in_worker(run)
        finally:
            distributed.shutdown()

    def checkpoint(self, run):
        """Preempted or out of time: the same run again (it resumes from its epoch checkpoint)."""
        import submitit

        return submitit.helpers.DelayedSubmission(ClusterTask(self.plan_ref, self.cfg_data), run)


def private_folder(path: str | Path) -> Path:
    """submitit's folder, created readable by its owner alone (it holds pickles)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    return folder


def check_executor(cfg: FinchConfig) -> None:
    """Under ``runtime.executor: slurm``, fail before any work where no SLURM is (no ``sbatch``)."""
    if cfg.runtime.executor != "slurm" or cfg.runtime.slurm.cluster != "slurm":
        return
    if shutil.which("sbatch") is None:
        raise ConfigError(
            "params.yaml: runtime.executor is slurm but this machine has no sbatch (no SLURM login node): run "
            "`dvc repro` on the cluster's login node, or set runtime.executor: local (runtime.slurm.cluster: "
            "local runs the jobs here, through submitit's local executor)"
        )


def make_executor(cfg: FinchConfig):
    """A submitit executor with ``runtime.slurm``'s resources (one task per GPU)."""
    import submitit

    slurm = cfg.runtime.slurm
    try:
        executor = submitit.AutoExecutor(folder=private_folder(slurm.folder) / "%j", cluster=slurm.cluster)
    except RuntimeError as err:  # no srun on this machine
        raise RuntimeError(
            f"runtime.executor is slurm but this machine is no SLURM login node ({err}); run the stage on "
            "one, or set runtime.executor: local (or runtime.slurm.cluster: local to try the jobs here)"
        ) from None
    gpus = slurm.gpus_per_node
    params = {
        "timeout_min": slurm.timeout_min,
        "nodes": 1,
        "tasks_per_node": slurm.tasks_per_job,
        "gpus_per_node": gpus,
        "cpus_per_task": slurm.cpus_per_task or cfg.runtime.threads,
        "mem_gb": slurm.mem_gb,
        "name": "finch",
    }
    if slurm.cluster == "slurm":
        params |= {"slurm_array_parallelism": slurm.array_parallelism, "slurm_setup": list(slurm.setup)}
        if slurm.partition:
            params["slurm_partition"] = slurm.partition
        if slurm.additional:
            params["slurm_additional_parameters"] = dict(slurm.additional)
    executor.update_parameters(**params)
    return executor


class SubmititPool(Executor):
    """The process pool's interface over submitit jobs: :meth:`submit_many` sends runs as one
    job array; their futures complete as the jobs finish (a poller thread). On submitit's local
    executor, which has no array parallelism, at most ``array_parallelism`` jobs run at once."""

    def __init__(self, cfg: FinchConfig, task: ClusterTask, names: dict):
        self.cfg, self.task, self.names = cfg, task, names  # names: run id -> printable run name
        self.executor = make_executor(cfg)
        self.slurm = cfg.runtime.slurm
        self.queued: list[tuple] = []  # (run, future) not yet submitted (local executor only)
        self.active: list[dict] = []  # {"run", "future", "job", "attempt"}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.poller = threading.Thread(target=self._poll, name="finch-submitit-poller", daemon=True)
        self.poller.start()
        self.last_counts: Counter = Counter()

    # --- the scheduling loop's side -------------------------------------------------------
    def submit(self, fn, /, *args, **kwargs) -> Future:
        raise TypeError("SubmititPool takes runs through submit_many")

    def submit_many(self, runs: list) -> list[Future]:
        futures = [Future() for _ in runs]
        with self.lock:
            if self.slurm.cluster == "slurm":
                self._send(list(zip(runs, futures, strict=True)), attempt=0)
            else:
                self.queued += [(run, future, 0) for run, future in zip(runs, futures, strict=True)]
                self._start_queued()
        return futures

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.stop.set()
        self.poller.join()
        with self.lock:
            if cancel_futures:  # the stage failed or was interrupted: its jobs stop too
                for entry in self.active:
                    entry["job"].cancel(check=False)
                self.active, self.queued = [], []

    # --- under the lock -------------------------------------------------------------------
    def _send(self, items: list[tuple], attempt: int) -> None:
        """Submit ``(run, future)`` pairs as one job array."""
        if not items:
            return
        with self.executor.batch():
            jobs = [self.executor.submit(self.task, run) for run, _ in items]
        for (run, future), job in zip(items, jobs, strict=True):
            self.active.append({"run": run, "future": future, "job": job, "attempt": attempt})
        log.info(
            "submitted %d run(s) as job(s) %s%s",
            len(jobs),
            ", ".join(job.job_id for job in jobs[:4]) + (" ..." if len(jobs) > 4 else ""),
            f" (attempt {attempt + 1})" if attempt else "",
        )

    def _start_queued(self) -> None:
        room = self.slurm.array_parallelism - len(self.active)
        while self.queued and room > 0:
            batch, self.queued = self.queued[:room], self.queued[room:]
            for attempt in sorted({a for _, _, a in batch}):
                self._send([(r, f) for r, f, a in batch if a == attempt], attempt)
            room = self.slurm.array_parallelism - len(self.active)

    def _poll(self) -> None:
        while not self.stop.wait(self.slurm.poll_s):
            with self.lock:
                try:
                    self._check_jobs()
                except Exception as err:  # sacct or sbatch failing: fail the stage rather than wait forever
                    for future in [e["future"] for e in self.active] + [q[1] for q in self.queued]:
                        if not future.done():
                            future.set_exception(RuntimeError(f"watching the SLURM jobs failed: {err}"))
                    return  # the stage raises; shutdown cancels the jobs still listed

    def _check_jobs(self) -> None:
        import submitit

        counts: Counter = Counter()
        for entry in list(self.active):
            job = entry["job"]
            if not job.done():
                counts[job.state] += 1
                continue
            self.active.remove(entry)
            run, future, attempt = entry["run"], entry["future"], entry["attempt"]
            name = self.names[run.id]
            try:
                future.set_result(job.results()[0])  # task 0 (rank 0 under DDP) has the record
            except submitit.core.utils.FailedJobError as err:  # the run raised: its traceback and log
                future.set_exception(
                    RuntimeError(f"{name}: job {job.job_id} failed; its log: {job.paths.stderr}\n{err}")
                )
            except submitit.core.utils.UncompletedJobError:
                if attempt < self.slurm.max_resubmits:
                    log.warning(
                        "%s: job %s ended without a result (killed, preempted or its node lost); "
                        "resubmitting it, it resumes from its checkpoint (attempt %d of %d)",
                        name,
                        job.job_id,
                        attempt + 2,
                        self.slurm.max_resubmits + 1,
                    )
                    if self.slurm.cluster == "slurm":
                        self._send([(run, future)], attempt + 1)
                    else:
                        self.queued.append((run, future, attempt + 1))
                else:
                    future.set_exception(
                        RuntimeError(
                            f"{name}: job {job.job_id} ended without a result {attempt + 1} time(s) "
                            f"(runtime.slurm.max_resubmits is {self.slurm.max_resubmits}); its logs: "
                            f"{job.paths.stderr} and {job.paths.stdout}"
                        )
                    )
            except Exception as err:  # its output unreadable: the stage must not wait forever
                future.set_exception(RuntimeError(f"{name}: job {job.job_id}: {err}; its log: {job.paths.stderr}"))
        if self.slurm.cluster != "slurm":
            self._start_queued()
        counts["queued here"] = len(self.queued)
        counts = +counts
        if counts != self.last_counts and counts:
            log.info("jobs: %s", ", ".join(f"{n} {state.lower()}" for state, n in sorted(counts.items())))
        self.last_counts = counts


def describe(cfg: FinchConfig) -> str:
    slurm = cfg.runtime.slurm
    where = f"partition {slurm.partition}" if slurm.partition else "the default partition"
    return (
        f"submitit's {slurm.cluster} executor ({where}, {slurm.gpus_per_node} GPU(s) a job, "
        f"array parallelism {slurm.array_parallelism}, job files in {slurm.folder})"
    )
