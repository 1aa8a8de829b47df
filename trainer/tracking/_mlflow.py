"""MLflow sink: runs nest sweep > trial (or cv) > fold, through ``MlflowClient`` and explicit run ids.

No global active run is used (``mlflow.start_run`` keeps a per-thread stack that folds and trials in
threads would trip over). The store is a SQLite file in the run or sweep folder unless
``MLFLOW_TRACKING_URI`` names another; artifacts of a local SQLite store go beside it in
``mlartifacts/``.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from segsweep.base.secrets import flatten_params, redact_params
from trainer.reporter import COMPLETE, FAILED, INTERRUPTED, PRUNED, RUNNING, FoldPreview
from trainer.tracking._backend import TrackerBackend

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from trainer.config import CVConfig
    from trainer.results import CVResult, FoldResult

PARENT_TAG = "mlflow.parentRunId"
ROOT_TAG = "segsweep.root"
KIND_TAG = "segsweep.kind"
FOLD_TAG = "segsweep.fold"
SWEEP_TAG = "segsweep.sweep"
#: The local SQLite store and its artifact folder, in a run's root (a sweep folder or `cv --out`).
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
#: On a fold run that ended before its fold did: its metrics are partial, not a result.
INTERRUPTED_TAG = "segsweep.interrupted"
#: How the run ended (trainer.reporter's states: a sweep trial's agrees with its trial.json), and why.
STATE_TAG = "segsweep.state"
REASON_TAG = "segsweep.reason"
#: MLflow's run status for each state: a pruned run finished its folds; only an interruption is KILLED.
RUN_STATUS = {RUNNING: "RUNNING", COMPLETE: "FINISHED", PRUNED: "FINISHED", FAILED: "FAILED", INTERRUPTED: "KILLED"}
#: The experiment tag MLflow's UI (3.x) reads to choose an experiment's pages; this value ("Machine
#: learning") lands on the runs table instead of the GenAI overview (mlflow/server/js: ExperimentKind).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
#: MLflow's limit on a parameter value's length.
_MAX_PARAM_LENGTH = 6000


def tracking_uri_for(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store in ``root``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(root).resolve() / DB_FILE)}"


def artifact_location_for(tracking_uri: str) -> str | None:
    """``mlartifacts/`` beside a local SQLite store; None (the server's choice) otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        return (db.resolve().parent / ARTIFACTS_DIR).as_uri()
    return None


def make_client(tracking_uri: str) -> MlflowClient:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=tracking_uri)


def experiment_id_for(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The experiment called ``name``, created (artifacts beside a SQLite store) when missing, and
    marked a model-training experiment (one made by an older segsweep is marked when next used)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return str(
                client.create_experiment(
                    name,
                    artifact_location=artifact_location_for(tracking_uri),
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            )
        except Exception:
            experiment = client.get_experiment_by_name(name)  # another process created it meanwhile
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # a user's own choice of kind is kept
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return str(experiment.experiment_id)


def find_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The newest run of the experiment carrying all ``tags``, if any (for resumed runs)."""
    if any("'" in v for v in tags.values()):
        return None
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs(
        [experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"]
    )
    return runs[0].info.run_id if runs else None


def log_params(
    client: MlflowClient,
    run_id: str,
    params: Mapping[str, Any],
    *,
    new_run: bool = False,
    tags: Mapping[str, str] | None = None,
) -> None:
    """Log redacted, flattened parameters (and ``tags``), skipping keys the run already has (a resumed
    run; ``new_run`` says there are none to look up)."""
    from mlflow.entities import Param, RunTag

    existing = {} if new_run else client.get_run(run_id).data.params
    flat = flatten_params(redact_params(params))
    batch = [Param(k, str(v)[:_MAX_PARAM_LENGTH]) for k, v in flat.items() if k not in existing]
    tag_batch = [RunTag(k, v) for k, v in (tags or {}).items()]
    chunks = [batch[i : i + 100] for i in range(0, len(batch), 100)] or [[]]  # at most 100 params per batch
    for i, chunk in enumerate(chunks):
        if chunk or (i == 0 and tag_batch):
            client.log_batch(run_id, params=chunk, tags=tag_batch if i == 0 else [], synchronous=True)


def _metrics(values: Mapping[str, float], step: int) -> list[Metric]:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]


def log_metrics(client: MlflowClient, run_id: str, values: Mapping[str, float], step: int) -> None:
    metrics = _metrics(values, step)
    if metrics:
        client.log_batch(run_id, metrics=metrics, synchronous=True)


class MlflowTracker(TrackerBackend):
    """One cross-validation as an MLflow run with one child run per fold.

    With a parent (the sweep's run), the cross-validation run is a trial nested under it. A rerun
    into the same folder (resume) reuses its run; a fold that restarts replaces its partial run.
    The sweep's part of the tracking context: ``tracking_uri``, ``experiment_id``, ``parent_run_id``.
    """

    name = "MLflow"
    key = "mlflow"
    files: ClassVar[Mapping[str, str]] = {"store": DB_FILE, "artifacts": ARTIFACTS_DIR}
    default_when = "always"

    def __init__(
        self,
        *,
        root: Path,
        run_name: str,
        params: Mapping[str, Any],
        tracking_uri: str | None = None,
        experiment_id: str | None = None,
        experiment_name: str | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self.run_name = run_name
        self.params = dict(params)
        self.tracking_uri = tracking_uri or tracking_uri_for(self.root)
        self.experiment_id = experiment_id
        self.experiment_name = experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "segsweep"
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None
        self.fold_runs: dict[int, str] = {}
        self._client: MlflowClient | None = None

    @classmethod
    def for_run(
        cls,
        *,
        root: Path,
        run_name: str,
        params: Mapping[str, Any],
        sweep_name: str | None,
        parent: Mapping[str, Any] | None,
    ) -> MlflowTracker:
        del sweep_name  # the parent run says which sweep
        parent = parent or {}
        return cls(
            root=root,
            run_name=run_name,
            params=params,
            tracking_uri=parent.get("tracking_uri"),
            experiment_id=parent.get("experiment_id"),
            parent_run_id=parent.get("parent_run_id"),
        )

    @classmethod
    def start_sweep(cls, root: Path, sweep_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        uri, experiment_id, run_id = start_sweep_run(root, sweep_name, params)
        return {"tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": run_id}

    @classmethod
    def finish_sweep(cls, part: Mapping[str, Any], sweep_name: str, summary: Mapping[str, Any]) -> None:
        del sweep_name
        if part.get("tracking_uri") and part.get("parent_run_id"):
            finish_sweep_run(part["tracking_uri"], part["parent_run_id"], summary)

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = make_client(self.tracking_uri)
        return self._client

    def _cv_start(self, config: CVConfig, n_folds: int, out_dir: Path) -> None:
        del config, out_dir
        client = self.client
        if self.experiment_id is None:
            self.experiment_id = experiment_id_for(client, self.experiment_name, self.tracking_uri)
        kind = "trial" if self.parent_run_id else "cv"
        self.run_id = find_run(client, self.experiment_id, {ROOT_TAG: str(self.root), KIND_TAG: kind})
        new_run = self.run_id is None
        if self.run_id is None:
            tags = {ROOT_TAG: str(self.root), KIND_TAG: kind}
            if self.parent_run_id:
                tags[PARENT_TAG] = self.parent_run_id
            self.run_id = client.create_run(self.experiment_id, run_name=self.run_name, tags=tags).info.run_id
        else:
            client.update_run(self.run_id, status="RUNNING")
        log_params(
            client,
            self.run_id,
            self.params,
            new_run=new_run,
            tags={"n_folds": str(n_folds), STATE_TAG: RUNNING, REASON_TAG: ""},
        )

    def _fold_start(self, fold: int, n_train: int, n_val: int) -> None:
        assert self.run_id is not None and self.experiment_id is not None
        client = self.client
        # A fold that starts again (resume) trained from scratch: its earlier partial run goes.
        while old := find_run(client, self.experiment_id, {PARENT_TAG: self.run_id, FOLD_TAG: str(fold)}):
            client.delete_run(old)
        run = client.create_run(
            self.experiment_id,
            run_name=f"fold {fold:02d}",
            tags={PARENT_TAG: self.run_id, FOLD_TAG: str(fold), KIND_TAG: "fold", ROOT_TAG: str(self.root)},
        )
        self.fold_runs[fold] = run.info.run_id
        log_params(client, run.info.run_id, {"fold": fold, "n_train": n_train, "n_val": n_val}, new_run=True)

    def _epoch(self, fold: int, epoch: int, metrics: Mapping[str, float]) -> None:
        if fold not in self.fold_runs:
            self._fold_start(fold, 0, 0)
        log_metrics(self.client, self.fold_runs[fold], metrics, step=epoch)

    def _fold_end(self, result: FoldResult, completed: list[FoldResult], preview: FoldPreview | None) -> None:
        assert self.run_id is not None
        client = self.client
        if result.fold not in self.fold_runs:
            self._fold_start(result.fold, result.n_train, result.n_val)
        fold_run = self.fold_runs.pop(result.fold)
        # One write per kind of record: on a shared SQLite store every call is a transaction, and a
        # 1,000-trial sweep makes tens of thousands of them (benchmarks/README.md, the scale study).
        from mlflow.entities import RunTag

        scores = {"dice": result.dice, "iou": result.iou, "epochs_run": result.epochs_run, "seconds": result.seconds}
        client.log_batch(
            fold_run,
            metrics=[*_metrics(scores, step=0), *(m for e in result.lr_drops for m in _metrics({"lr_drop": 1.0}, e))],
            tags=[RunTag("lr_drops", ",".join(str(e) for e in result.lr_drops))],
            synchronous=True,
        )
        if preview is not None:
            from trainer.preview import preview_png

            with tempfile.TemporaryDirectory(prefix="segsweep-preview-") as tmp:
                path = Path(tmp) / f"fold_{result.fold:02d}.png"
                path.write_bytes(preview_png(preview))
                client.log_artifact(fold_run, str(path), "preview")
        client.set_terminated(fold_run, "FINISHED")
        self._log_summary(result.fold, completed)

    def _log_summary(self, fold: int, completed: list[FoldResult]) -> None:
        from trainer.results import summarise

        assert self.run_id is not None
        latest = next(f for f in completed if f.fold == fold)
        mean, std = summarise(completed)
        summary = {
            "mean_dice": mean["dice"],
            "mean_iou": mean["iou"],
            "std_dice": std["dice"],
            "std_iou": std["iou"],
            "folds_done": len(completed),
        }
        self.client.log_batch(
            self.run_id,
            metrics=[
                *_metrics({"fold_dice": latest.dice, "fold_iou": latest.iou}, step=fold),
                *_metrics(summary, step=len(completed)),
            ],
            synchronous=True,
        )

    def _cv_end(self, result: CVResult) -> None:
        assert self.run_id is not None
        log_metrics(
            self.client,
            self.run_id,
            {
                "mean_dice": result.mean["dice"],
                "mean_iou": result.mean["iou"],
                "std_dice": result.std["dice"],
                "std_iou": result.std["iou"],
                "folds_done": len(result.folds),
            },
            step=len(result.folds),
        )
        self._end(COMPLETE, "")

    def _cv_incomplete(self, state: str, reason: str) -> None:
        self._end(state, reason)

    def _end(self, state: str, reason: str) -> None:
        """Close the fold run still open (a fold that did not end) and the run, as ``state``."""
        from mlflow.entities import RunTag

        assert self._client is not None
        fold_runs, self.fold_runs = list(self.fold_runs.values()), {}
        for fold_run in fold_runs:
            # Tagged so that nobody reads its partial metrics as a result; a rerun deletes it when
            # it trains the fold again.
            self._client.set_tag(fold_run, INTERRUPTED_TAG, "true", synchronous=True)
            if self._client.get_run(fold_run).info.status == "RUNNING":
                self._client.set_terminated(fold_run, RUN_STATUS[state])
        if self.run_id is not None and self._client.get_run(self.run_id).info.status == "RUNNING":
            tags = [RunTag(STATE_TAG, state), RunTag(REASON_TAG, reason[:_MAX_PARAM_LENGTH])]
            self._client.log_batch(self.run_id, tags=tags, synchronous=True)
            self._client.set_terminated(self.run_id, RUN_STATUS[state])

    def _close(self) -> None:
        if self._client is None:
            return
        # Runs still open here were interrupted (Ctrl-C, a killed worker, a sweep stopping to resume
        # later): the run ended neither complete, pruned nor failed.
        self._end(INTERRUPTED, "interrupted before the run ended")


def start_sweep_run(root: Path, sweep_name: str, params: Mapping[str, Any]) -> tuple[str, str, str]:
    """The sweep's parent run (reused when the sweep resumes): (tracking uri, experiment id, run id)."""
    uri = tracking_uri_for(root)
    client = make_client(uri)
    experiment_id = experiment_id_for(client, sweep_name, uri)
    tags = {KIND_TAG: "sweep", SWEEP_TAG: sweep_name, ROOT_TAG: str(Path(root).resolve())}
    run_id = find_run(client, experiment_id, tags)
    if run_id is None:
        run_id = client.create_run(experiment_id, run_name=sweep_name, tags=tags).info.run_id
    else:
        client.update_run(run_id, status="RUNNING")
    log_params(client, run_id, params)
    return uri, experiment_id, run_id


def finish_sweep_run(tracking_uri: str, run_id: str, summary: Mapping[str, Any]) -> None:
    """Log the sweep's summary numbers (numbers become metrics, the rest tags) and close its run."""
    client = make_client(tracking_uri)
    flat = flatten_params(redact_params(summary))
    numbers = {k: float(v) for k, v in flat.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    log_metrics(client, run_id, numbers, step=0)
    for key, value in flat.items():
        if key not in numbers:
            client.set_tag(run_id, f"summary.{key}", str(value)[:_MAX_PARAM_LENGTH], synchronous=True)
    client.set_tag(run_id, STATE_TAG, COMPLETE, synchronous=True)
    client.set_terminated(run_id, RUN_STATUS[COMPLETE])
