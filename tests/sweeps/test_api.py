"""The README's notebook example, run as written (on synthetic data instead of Kvasir-SEG)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.synth import make_dataset

REPO = Path(__file__).resolve().parents[2]


def readme_notebook_example() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### From Python (notebooks)") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README lost its notebook example"
    return match.group(1)


@pytest.mark.slow
@pytest.mark.long  # two real trainings, a retrain and a prediction (~2 min); CI's time goes to the cluster tests
def test_readme_notebook_example_runs(tmp_path: Path, ray_env: dict[str, str]) -> None:
    data = make_dataset(tmp_path / "data", 40)
    code = readme_notebook_example()
    assert "../shared/data/kvasir-seg" in code and '"medico2020_train"' in code
    code = code.replace("../shared/data/kvasir-seg", str(data)).replace('"medico2020_train"', '"train"')
    code += (
        # ASHA (the default scheduler) may prune the trial that reaches fold 1 second with a lower Dice.
        "\nassert trials['state'].iloc[0] == 'COMPLETE' and trials['rank'].iloc[0] == 1"
        "\nassert len(trials) == 2 and set(trials['state']) <= {'COMPLETE', 'PRUNED'}"
        "\nassert len(folds) == trials['folds_done'].sum() and set(epochs['epoch']) == {1}"
        "\nassert config.image_size == 64 and config.epochs == 1"
        "\nassert (model / 'weights.h5').is_file()"
        "\nassert scored.n_images == 40 and scored.rows[0]['variant'] == 'plain'"
        "\nprint('EXAMPLE OK')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("SEGSWEEP_HOME", None)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0 and "EXAMPLE OK" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "runs" / "notebook" / "sweep.json").is_file()  # the default storage: ./runs
    assert "sweep notebook" in (tmp_path / "runs" / "notebook" / "driver.log").read_text()


def test_images_frame_pairs_two_trials_image_by_image(tmp_path: Path) -> None:
    from sweeps import Sweep
    from sweeps.folder import load_sweep, pair_image_scores
    from tests.support.fake_sweep import make_sweep

    make_sweep(tmp_path)
    sweep = Sweep.open("quick1", tmp_path)
    images = sweep.images()
    assert list(images.columns) == ["trial_id", "number", "start", "fold", "stem", "dice", "iou"]
    # Per trial and fold, the mean over its images is the fold's recorded Dice.
    means = images.groupby(["trial_id", "fold"])["dice"].mean()
    folds = sweep.folds().set_index(["trial_id", "fold"])["dice"]
    assert means.round(12).to_dict() == folds.round(12).to_dict()
    trials = load_sweep(tmp_path, "quick1").trials
    pairs = pair_image_scores(trials[0], trials[2])  # both complete on the same two folds
    assert len(pairs) == 12 and all(a.fold == b.fold for a, b in pairs.values())
    assert len(pair_image_scores(trials[0], trials[3])) == 6  # the pruned trial finished fold 1 only


def test_a_misspelt_create_option_names_the_closest_and_no_method_is_replaced(tmp_path: Path) -> None:
    from segsweep.base.errors import SegsweepError
    from sweeps import Sweep

    data = make_dataset(tmp_path / "data", 4)
    with pytest.raises(SegsweepError, match=r"unknown option 'concurency'; did you mean 'concurrency'\? see"):
        Sweep.create("s", data=data, space="quick", trials=1, storage=tmp_path / "runs", concurency=2)
    # hasattr() let any attribute through: `validate=None` replaced the check itself.
    with pytest.raises(SegsweepError, match=r"unknown option 'validate'"):
        Sweep.create("s", data=data, space="quick", trials=1, storage=tmp_path / "runs", validate=None)
