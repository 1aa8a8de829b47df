"""The sweep's Optuna side: the study in SWEEP/optuna.db, the sampler, and a searcher that prunes.

Ray's ``OptunaSearch`` tells Optuna that a trial the scheduler stopped early is COMPLETE, valued at
its last (partial) result, so TPE learns from a one-fold mean as if it were a ten-fold one. Here a
trial that ends before its last fold enters the study as PRUNED, carrying its folds' running means
as intermediate values (steps = folds done); errors enter as FAIL.

A proposal whose parameters equal a trial the study already scored (COMPLETE or PRUNED: this sweep's,
or an earlier sweep's that ``--warm-start`` added) is not trained again: the searcher tells the
study that trial's score for it (marked with ``STUDY_REPEAT_ATTR``; no Ray trial, no trial folder)
and asks for another. TPE proposes a repeat readily once a small categorical space is mostly
explored; after :data:`MAX_REPEATED_PROPOSALS` repeats in a row the space is taken as exhausted
and the searcher ends the sweep. Optuna has no such check of its own (a sampler may propose any
point again), nor has Ray's ``OptunaSearch``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweeps._callbacks import interrupted_by_stop
from sweeps.folder import (
    OBJECTIVE,
    STUDY_EXHAUSTED_ATTR,
    STUDY_REASON_ATTR,
    STUDY_REPEAT_ATTR,
    STUDY_START_ATTR,
    STUDY_TRIAL_ID_ATTR,
    SweepFolder,
    TrialRecord,
    load_sweep,
    now,
    read_stop_request,
    read_trial_record,
    update_trial_record,
)
from trainer.results import summarise

if TYPE_CHECKING:
    from search_spaces import SearchSpace


def open_storage(sweep_dir: Path) -> optuna.storages.RDBStorage:
    """The sweep's SQLite study storage; ``optuna-dashboard sqlite:///...`` can read it meanwhile."""
    # A dashboard reading the file holds short locks: wait for them instead of failing a write.
    url = SweepFolder(sweep_dir).optuna_url
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def n_startup_trials(trials: int, concurrency: int) -> int:
    """Random start-up trials before TPE models the results.

    Optuna's default (10) would make a small sweep purely random. A fifth of the budget, at least
    the concurrency (the first parallel batch has nothing to learn from anyway) and 2, at most 10.
    """
    return max(2, min(10, max(trials // 5, concurrency)))


def make_sampler(trials: int, concurrency: int, seed: int) -> optuna.samplers.TPESampler:
    """Seeded TPE. ``constant_liar`` makes running trials count as bad results, so parallel workers
    asking at the same time get different proposals instead of the same most promising point."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=n_startup_trials(trials, concurrency),
            multivariate=True,
            group=True,  # conditional parameters (``when``) get their own joint model
            constant_liar=True,
        )


#: Proposals in a row that repeat scored configurations before the space counts as exhausted. Each
#: repeat costs an ask and a tell (a fraction of a second, no training) and stays in the study as a
#: marked trial; TPE's prior keeps every unscored choice a chance at each ask.
MAX_REPEATED_PROPOSALS = 20


class FoldPruningOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that records scheduler-stopped trials as PRUNED and writes trial.json.

    Results are expected to carry ``folds_done`` and ``n_folds`` besides the metric; the step of
    each intermediate value is ``folds_done`` (not Ray's ``training_iteration``, which a restored
    trial does not restart at the same place).
    """

    def __init__(self, *args: Any, sweep_dir: str | Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sweep_dir = str(sweep_dir)

    def _setup_study(self, mode: str | list[str]) -> None:
        super()._setup_study(mode)
        if self._ot_study is not None:
            name_objective(self._ot_study)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if self._ot_study is not None:  # a study made before segsweep named its objective
            name_objective(self._ot_study)

    # Searcher.suggest's docstring allows Searcher.FINISHED (a str) though its annotation does not.
    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if read_stop_request(SweepFolder(Path(self.sweep_dir))) is not None:
            return None  # the sweep is stopping: no new trial (Tune asks again later, or ends)
        for _ in range(MAX_REPEATED_PROPOSALS):
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            scored = self._scored_with(ot_trial)
            if scored is None:
                break
            self._answer_repeat(trial_id, ot_trial, scored)
        else:
            assert self._ot_study is not None
            finished = self._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            configurations = sum(STUDY_REPEAT_ATTR not in t.user_attrs for t in finished)
            said = (
                f"search space exhausted after {configurations} scored configurations: the sampler's last "
                f"{MAX_REPEATED_PROPOSALS} proposals all repeated one; widen the space for more"
            )
            # On the study, so the driver's end (sweeps.runner) calls the sweep finished, not interrupted.
            self._ot_study.set_user_attr(STUDY_EXHAUSTED_ATTR, said)
            print(f"[segsweep] {said}", flush=True)
            return Searcher.FINISHED
        ot_trial.set_user_attr(STUDY_TRIAL_ID_ATTR, trial_id)
        update_trial_record(
            SweepFolder(Path(self.sweep_dir)).trial_dir(trial_id),
            trial_id=trial_id,
            number=ot_trial.number,
            params=dict(ot_trial.params),
            state="RUNNING",
            reason=None,
            proposed=now(),
            start=ot_trial.user_attrs.get(STUDY_START_ATTR),  # an enqueued starting point's label
        )
        return config

    def _scored_with(self, ot_trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
        """The study's scored trial (COMPLETE or PRUNED) with the parameters ``ot_trial`` was given, if any."""
        assert self._ot_study is not None
        params = ot_trial.params
        for frozen in self._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if frozen.params == params and frozen.number != ot_trial.number:
                return frozen
        return None

    def _answer_repeat(self, trial_id: str, ot_trial: optuna.Trial, scored: optuna.trial.FrozenTrial) -> None:
        """Tell the repeated proposal ``scored``'s result (its fold means, its state) and free ``trial_id``
        for the next ask: the sampler learns the point is known, and nothing trains it again."""
        for step, running_mean in sorted(scored.intermediate_values.items()):
            ot_trial.report(running_mean, step)
        ot_trial.set_user_attr(STUDY_REPEAT_ATTR, scored.number)
        value = scored.value if scored.state == TrialState.COMPLETE else None  # PRUNED: its last running mean
        ot_trial.study.tell(ot_trial, value, state=scored.state)
        del self._ot_trials[trial_id]
        print(
            f"[segsweep] proposal {ot_trial.number} repeated the configuration of study trial {scored.number} "
            f"(already {scored.state.name.lower()}): told the sampler its score, not training it again",
            flush=True,
        )

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value = result.get(self.metric)
        step = result.get("folds_done")
        if value is None or step is None or not math.isfinite(float(value)):
            return
        ot_trial = self._ot_trials[trial_id]
        frozen = ot_trial.study._storage.get_trial(ot_trial._trial_id)
        if int(step) in frozen.intermediate_values:
            return  # the same fold reported again after a restore
        ot_trial.report(float(value), int(step))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if not error and interrupted_by_stop(SweepFolder(Path(self.sweep_dir)), result):
            return  # stays RUNNING in the study; the resumed sweep tells its end
        ot_trial = self._ot_trials[trial_id]
        state, value = completion_state(result, error=error)
        if state == TrialState.FAIL:
            # The trainable records why it failed before raising; the study keeps it for the dashboard.
            reason = read_trial_record(SweepFolder(Path(self.sweep_dir)).trial_dir(trial_id)).reason
            if reason:
                ot_trial.set_user_attr(STUDY_REASON_ATTR, str(reason))
        if state != TrialState.FAIL and result:
            # Ray hands a trial's last result to on_trial_complete only, not to on_trial_result.
            self.on_trial_result(trial_id, result)
        # skip_if_finished: after a driver restart the study may already hold this trial's end.
        ot_trial.study.tell(ot_trial, value, state=state, skip_if_finished=True)
        self._completed_trials.add(trial_id)


def space_exhausted(sweep_dir: Path, study_name: str) -> str | None:
    """Why the searcher ended the sweep before its ``--trials`` (every proposal a repeat), or None."""
    if not SweepFolder(sweep_dir).optuna_db.is_file():
        return None  # no study (opening one would create the file)
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(sweep_dir))
    except KeyError:
        return None
    said = study.user_attrs.get(STUDY_EXHAUSTED_ATTR)
    return str(said) if said else None


def completion_state(result: dict[str, Any] | None, *, error: bool) -> tuple[TrialState, float | None]:
    """The Optuna state and value of a finished Ray trial given its last result."""
    if error or not result:
        return TrialState.FAIL, None
    folds_done, n_folds = result.get("folds_done"), result.get("n_folds")
    value = result.get(OBJECTIVE.metric)
    if folds_done is None or n_folds is None or value is None:
        return TrialState.FAIL, None
    if int(folds_done) < int(n_folds):
        return TrialState.PRUNED, None  # Optuna takes the last intermediate value as its value
    if not math.isfinite(float(value)):
        return TrialState.FAIL, None
    return TrialState.COMPLETE, float(value)


def name_objective(study: optuna.Study) -> None:
    """Name the study's objective, so optuna-dashboard says what it is instead of "Objective 0"."""
    if study.metric_names != [OBJECTIVE.display_name]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([OBJECTIVE.display_name])


def make_searcher(
    sweep_dir: Path, study_name: str, define_by_run: Any, trials: int, concurrency: int, seed: int
) -> FoldPruningOptunaSearch:
    return FoldPruningOptunaSearch(
        space=define_by_run,
        metric=OBJECTIVE.metric,
        mode=OBJECTIVE.direction,
        sampler=make_sampler(trials, concurrency, seed),
        study_name=study_name,
        storage=open_storage(sweep_dir),
        sweep_dir=sweep_dir,
    )


def reconcile_study(sweep_dir: Path, study_name: str, records: dict[str, TrialRecord]) -> int:
    """Finish Optuna trials left RUNNING by a driver that died; return how many were fixed.

    ``records`` maps Ray trial ids to their trial.json. A trial whose record says it completed
    every fold is told COMPLETE with its mean of the objective, PRUNED stays PRUNED, anything else FAIL (the
    driver died between proposing it and Ray recording it; Ray proposed a replacement).
    """
    storage = open_storage(sweep_dir)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    fixed = 0
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        record = records.get(str(frozen.user_attrs.get(STUDY_TRIAL_ID_ATTR))) or TrialRecord()
        state, value, reason = _state_from_record(record)
        if reason:
            study._storage.set_trial_user_attr(frozen._trial_id, STUDY_REASON_ATTR, reason)
        study.tell(frozen.number, value, state=state, skip_if_finished=True)
        fixed += 1
    return fixed


def _state_from_record(record: TrialRecord) -> tuple[TrialState, float | None, str | None]:
    value = getattr(record, OBJECTIVE.record_field)
    if record.state == "COMPLETE" and value is not None:
        return TrialState.COMPLETE, float(value), None
    if record.state == "PRUNED":
        return TrialState.PRUNED, None, record.reason
    reason = record.reason or "the sweep driver stopped before this proposal ran; Ray drew another"
    return TrialState.FAIL, None, reason


def replayed_in_space(space: SearchSpace, params: Mapping[str, Any]) -> optuna.trial.FixedTrial:
    """``params`` (a trial's recorded proposal) run through the space's define-by-run: its ``params``
    and ``distributions`` are what a study adding that trial (``create_trial``) needs."""
    from optuna.trial import FixedTrial

    fixed = FixedTrial(dict(params))
    space.define_by_run(fixed)
    return fixed


def rebuild_study(sweep_dir: Path, study_name: str, space: SearchSpace) -> int:
    """Make the study in SWEEP/optuna.db again from the trial records (the file was lost); return its trials.

    The records hold what the study held: each trial's number, proposed parameters, state and reason
    (trial.json) and its folds' Dice (the fold files), whose running means the searcher reported as
    intermediate values (step = folds done); a COMPLETE trial's value is its mean over the folds, a
    PRUNED one's its last running mean (as ``study.tell`` makes it). The parameters' distributions
    come from the space (its define-by-run on the recorded values). Numbers are kept, a number with
    no trial folder becoming a FAIL trial, because Ray's saved searcher refers to the study's trials
    by their storage ids, which a fresh storage hands out in order of addition.
    """
    from optuna.trial import create_trial

    sweep = load_sweep(sweep_dir.parent, sweep_dir.name)
    by_number = {t.number: t for t in sweep.trials if t.number is not None}
    rebuilt: list[optuna.trial.FrozenTrial] = []
    for number in range(max(by_number, default=-1) + 1):
        trial = by_number.get(number)
        if trial is None:
            rebuilt.append(create_trial(state=TrialState.FAIL, user_attrs={STUDY_REASON_ATTR: _NO_RECORD}))
            continue
        fixed = replayed_in_space(space, trial.params)
        running_means = {k: summarise(trial.folds[:k])[0][OBJECTIVE.metric] for k in range(1, trial.folds_done + 1)}
        state = _RECORD_STATES.get(trial.state, TrialState.FAIL)
        value = None
        if state == TrialState.COMPLETE:
            value = trial.mean[OBJECTIVE.metric]
        elif state == TrialState.PRUNED and running_means:
            value = running_means[max(running_means)]
        attrs = {STUDY_TRIAL_ID_ATTR: trial.trial_id, **({STUDY_REASON_ATTR: trial.reason} if trial.reason else {})}
        if trial.start:  # a starting point stays marked, and is not enqueued again on this resume
            attrs[STUDY_START_ATTR] = trial.start
        rebuilt.append(
            create_trial(
                state=state,
                value=value,
                params=fixed.params,
                distributions=fixed.distributions,
                user_attrs=attrs,
                intermediate_values=running_means,
            )
        )
    study = optuna.create_study(
        study_name=study_name, storage=open_storage(sweep_dir), direction=OBJECTIVE.optuna_direction
    )
    study.add_trials(rebuilt)
    name_objective(study)
    return len(rebuilt)


#: trial.json's states as the study's.
_RECORD_STATES = {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED, "RUNNING": TrialState.RUNNING}
_NO_RECORD = "no trial folder records this proposal (the driver stopped between proposing and recording it)"
