"""``segsweep report --test-prediction``: the winner against a starting point on a test set, paired by image
(reports.heldout), and the predictions it refuses (other images, other models, unfinished)."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from sweeps.cli import main
from sweeps.folder import load_sweep
from tests.support.fake_sweep import FakeTrial, make_sweep, read_json

N_IMAGES = 30
#: A starting point's per-image test Dice, spread like real images.
BASE = [0.4 + 0.5 * (i % 7) / 7 for i in range(N_IMAGES)]
STEMS = [f"img{i:03d}" for i in range(N_IMAGES)]


def _sweep(storage: Path) -> None:
    """A starting point (lr 1e-3) and the winner (lr 2e-3) with per-image CV scores, two folds of 10."""
    base = [0.5 + 0.3 * (i % 7) / 7 for i in range(20)]

    def trial(lr: float, shift: float, start: str | None = None) -> FakeTrial:
        images = [b + shift for b in base]
        folds = [images[:10], images[10:]]
        params = {"encoder": "resnet18", "weights": "imagenet", "batch_size": 8, "lr": lr}
        return FakeTrial(params, [sum(f) / 10 for f in folds], image_dice=folds, start=start)

    make_sweep(storage, "s", [trial(1e-3, 0.0, start="hand-pick"), trial(2e-3, 0.1)])


def _prediction(
    out: Path, storage: Path, trial_id: str, dice: list[float], *, images: Path | None = None,
    stems: list[str] = STEMS, state: str = "complete", seed: int | None = None,
) -> Path:  # fmt: skip
    """A `predict --masks` output folder as predict writes it: prediction.json and metrics.json with the
    model's configuration (here the trial's, with ``seed`` where retrained with another) and each image's Dice."""
    config = next(t.config for t in load_sweep(storage, "s").trials if t.trial_id == trial_id)
    config = config if seed is None else {**config, "seed": seed}
    images = images or out.parent / "medico2020_val" / "images"
    out.mkdir(parents=True)
    (out / "prediction.json").write_text(json.dumps({"state": state, "images": str(images)}))
    metrics = {
        "model": str(out.parent / f"model-{trial_id}"),
        "trial": trial_id,
        "config": config,
        "source": {"trial": trial_id},
        "images": str(images),
        "masks": str(images.parent / "masks"),
        "overlap_with_training": [],
        "per_image": [{"image": s, "dice": d, "iou": d} for s, d in zip(stems, dice, strict=True)],
    }
    (out / "metrics.json").write_text(json.dumps(metrics))
    return out


def _report(storage: Path, *predictions: Path) -> int:
    args = ["report", "s", "--storage", str(storage), "--out", str(storage / "r")]
    return main([*args, *(word for p in predictions for word in ("--test-prediction", str(p)))])


@pytest.mark.parametrize(
    ("shift", "said", "verdict"),
    [
        (0.07, "+0.070 Dice over your starting point hand-pick, 95 % interval +0.0", "beat"),
        (0.004, "tied with your starting point hand-pick: +0.004 Dice, 95 % interval -0.0", "tie"),
        (-0.05, "did not beat your starting point hand-pick: -0.050 Dice", "did not beat"),
    ],
)
def test_the_report_states_the_winner_against_the_starting_point_on_the_test_set(
    tmp_path: Path, shift: float, said: str, verdict: str
) -> None:
    _sweep(tmp_path)
    noisy = [b + shift + (0.04 if i % 2 else -0.04) for i, b in enumerate(BASE)]
    winner = _prediction(tmp_path / "p-winner", tmp_path, "trial_00001", noisy)
    start = _prediction(tmp_path / "p-start", tmp_path, "trial_00000", BASE)
    assert _report(tmp_path, start, winner) == 0  # the order given does not matter: configurations decide
    sentence = f"On the test set medico2020_val, the winner's prediction: {said}"
    md, page = (tmp_path / "r" / "report.md").read_text(), (tmp_path / "r" / "report.html").read_text()
    assert sentence in md and html.escape(sentence) in page
    assert f"| medico2020_val | hand-pick | #0 (trial_00000) | {N_IMAGES} |" in md
    [compared] = read_json(tmp_path / "r" / "best.json")["evidence"]["test_sets"]
    assert compared["test_set"] == "medico2020_val" and compared["n_pairs"] == N_IMAGES
    assert compared["verdict"] == verdict and compared["mean_difference"] == pytest.approx(shift)
    assert compared["winner_prediction"] == str(winner) and compared["other_prediction"] == str(start)


def test_a_winner_retrained_with_another_seed_is_still_the_winner_and_the_sentence_names_the_seed(
    tmp_path: Path,
) -> None:
    _sweep(tmp_path)
    noisy = [b + 0.07 + (0.04 if i % 2 else -0.04) for i, b in enumerate(BASE)]
    winner = _prediction(tmp_path / "p-winner", tmp_path, "trial_00001", noisy, seed=7)  # retrain --seed 7
    start = _prediction(tmp_path / "p-start", tmp_path, "trial_00000", BASE)
    assert _report(tmp_path, start, winner) == 0
    [compared] = read_json(tmp_path / "r" / "best.json")["evidence"]["test_sets"]
    assert (compared["winner_retrained_seed"], compared["other_retrained_seed"]) == (7, None)
    assert compared["sentence"].endswith("(the winner retrained with seed 7).")
    assert compared["sentence"] in (tmp_path / "r" / "report.md").read_text()


def test_sweep_status_repeats_the_reports_test_set_verdict_while_its_winner_is_the_sweeps(tmp_path: Path) -> None:
    from sweeps.folder import format_leaderboard

    _sweep(tmp_path)
    noisy = [b + 0.07 + (0.04 if i % 2 else -0.04) for i, b in enumerate(BASE)]
    winner = _prediction(tmp_path / "p-winner", tmp_path, "trial_00001", noisy)
    start = _prediction(tmp_path / "p-start", tmp_path, "trial_00000", BASE)
    assert load_sweep(tmp_path, "s").folder.report_best_file.parent.name == "report"
    assert "On the test set" not in format_leaderboard(load_sweep(tmp_path, "s"))  # no report yet
    assert main(["report", "s", "--storage", str(tmp_path), "--test-prediction", str(start),
                 "--test-prediction", str(winner)]) == 0  # fmt: skip
    sweep = load_sweep(tmp_path, "s")
    best = sweep.folder.report_best_file
    [compared] = read_json(best)["evidence"]["test_sets"]
    status = format_leaderboard(sweep)
    assert f"{compared['sentence']} (from {best})" in status
    assert "On the test set medico2020_val, the winner's prediction: +0.070 Dice over your starting point" in status
    # sweep status --json: the same evidence for programs (a CI job asking "did the sweep beat my start?").
    from sweeps._machine_output import status_document

    evidence = status_document(sweep.folder)["evidence"]
    assert evidence["winner"] == "trial_00001" and evidence["comparisons"][0]["verdict"] == "beat"
    assert evidence["test_sets"] == [compared] and evidence["test_sets_note"] is None
    json.dumps(evidence, allow_nan=False)

    # A report of an earlier winner: its test verdict is not said as the current winner's.
    record = read_json(best)
    record["evidence"]["winner"] = "trial_00000"
    best.write_text(json.dumps(record))
    status = format_leaderboard(load_sweep(tmp_path, "s"))
    assert "On the test set" not in status and "is of trial trial_00000, no longer the winner" in status
    evidence = status_document(sweep.folder)["evidence"]
    assert evidence["test_sets"] == [] and "no longer the winner" in evidence["test_sets_note"]
    best.write_text("{damaged")
    assert f"Cannot read {best}: rerun `segsweep report" in format_leaderboard(load_sweep(tmp_path, "s"))


def test_predictions_that_do_not_pair_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _sweep(tmp_path)
    winner = _prediction(tmp_path / "p-winner", tmp_path, "trial_00001", BASE)
    start = _prediction(tmp_path / "p-start", tmp_path, "trial_00000", BASE)
    elsewhere = _prediction(
        tmp_path / "p-other-set", tmp_path, "trial_00000", BASE, images=tmp_path / "kvasir_test" / "images"
    )
    fewer = _prediction(tmp_path / "p-fewer", tmp_path, "trial_00000", BASE[:-1], stems=STEMS[:-1])
    unfinished = _prediction(tmp_path / "p-killed", tmp_path, "trial_00000", BASE, state="running")
    alien = _prediction(tmp_path / "p-alien", tmp_path, "trial_00000", BASE)
    metrics = read_json(alien / "metrics.json")
    (alien / "metrics.json").write_text(json.dumps({**metrics, "config": {**metrics["config"], "lr": 0.05}}))
    cases = {
        (winner, elsewhere): "the predictions are of 2 different test sets",
        (winner, fewer): "scored different images",
        (winner, unfinished): "the prediction did not finish",
        (winner, alien): "is not that of the winner or of a starting point of sweep s",
        (start,): "none is of the winner #1 (trial_00001)",
        (winner,): "need exactly one of each starting point besides the winner's",
        (winner, start, start): "need exactly one of each starting point",
    }
    for given, message in cases.items():
        assert _report(tmp_path, *given) == 2, message
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written for a refused report
