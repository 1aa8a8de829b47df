"""The sweep folder (``STORAGE/NAME/``): its layout, its records, and the results read from them.

This package is the only code that knows the folder's file names. The Ray trainable, the Optuna
searcher, ``sweep status``, the reports, ``predict``'s test-score records, ``segsweep ui`` and the
tests' fabricated sweeps all go through it.
"""

from sweeps.folder._layout import (
    DEFAULT_STORAGE,
    FORMAT_VERSION,
    STORAGE_ENV,
    NoSuchSweep,
    SweepFolder,
    default_storage,
    storage_help,
    sweep_names,
)
from sweeps.folder._ranking import (
    RANKING_RULE,
    format_leaderboard,
    format_text_table,
    format_value,
    is_eligible,
    leaderboard_table,
    mean_std,
    rank_trials,
)
from sweeps.folder._records import (
    STUDY_REASON_ATTR,
    STUDY_TRIAL_ID_ATTR,
    DamagedRecord,
    append_event,
    append_submission,
    now,
    read_events,
    read_spec_record,
    read_submissions,
    read_trial_record,
    update_trial_record,
    write_spec_record,
)
from sweeps.folder._results import (
    COMPLETE,
    FAILED,
    PRUNED,
    RUNNING,
    TRIAL_STATES,
    SweepResults,
    TrialResult,
    load_sweep,
    load_trial,
)
from sweeps.folder._scores import TestScore, load_test_scores, record_test_scores

__all__ = [
    "COMPLETE",
    "DEFAULT_STORAGE",
    "FAILED",
    "FORMAT_VERSION",
    "PRUNED",
    "RANKING_RULE",
    "RUNNING",
    "STORAGE_ENV",
    "STUDY_REASON_ATTR",
    "STUDY_TRIAL_ID_ATTR",
    "TRIAL_STATES",
    "DamagedRecord",
    "NoSuchSweep",
    "SweepFolder",
    "SweepResults",
    "TestScore",
    "TrialResult",
    "append_event",
    "append_submission",
    "default_storage",
    "format_leaderboard",
    "format_text_table",
    "format_value",
    "is_eligible",
    "leaderboard_table",
    "load_sweep",
    "load_test_scores",
    "load_trial",
    "mean_std",
    "now",
    "rank_trials",
    "read_events",
    "read_spec_record",
    "read_submissions",
    "read_trial_record",
    "record_test_scores",
    "storage_help",
    "sweep_names",
    "update_trial_record",
    "write_spec_record",
]
