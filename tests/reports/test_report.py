"""segsweep report: winner rule, leaderboard, Table 2, pretraining, Optuna importance, files, offline HTML."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from reports.leaderboard import compare_pretraining, pick_winner
from reports.report import build_report, render_html, render_markdown
from reports.retrain import imitated_schedule
from search_spaces import load_space
from segsweep.base.errors import SegsweepError
from sweeps.cli import main
from sweeps.folder import format_leaderboard, load_sweep, rank_trials, record_test_scores
from tests.support.fake_sweep import SPACE_WITH_EPOCHS, FakeTrial, make_sweep, read_json
from trainer.config import CVConfig, load_config_file


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    make_sweep(tmp_path / "sweeps", "quick1", data=tmp_path / "data")
    return tmp_path / "sweeps"


def test_winner_is_best_mean_dice_among_trials_with_all_folds(storage: Path) -> None:
    sweep = load_sweep(storage, "quick1")
    choice = pick_winner(sweep)
    assert choice.winner.trial_id == "trial_00000"
    assert choice.runner_up is not None and choice.runner_up.trial_id == "trial_00002"
    assert choice.eligible == 3
    # Gap 0.64 - 0.605 in units of the winner's fold std (sample std of 0.62, 0.66).
    assert choice.gap_in_std == pytest.approx(0.035 / 0.0282843, rel=1e-4)
    ranked = rank_trials(sweep.trials)
    assert [t.trial_id for t in ranked] == [f"trial_0000{i}" for i in (0, 2, 1, 3, 4)]


def test_pruned_trial_with_high_partial_mean_does_not_win(tmp_path: Path) -> None:
    trials = [
        FakeTrial({"encoder": "mobilenet", "weights": "none", "batch_size": 4, "lr": 1e-3}, [0.99], state="PRUNED"),
        FakeTrial({"encoder": "mobilenet", "weights": "none", "batch_size": 4, "lr": 2e-3}, [0.4, 0.5]),
    ]
    make_sweep(tmp_path, "s", trials)
    choice = pick_winner(load_sweep(tmp_path, "s"))
    assert choice.winner.trial_id == "trial_00001"
    assert choice.runner_up is None and choice.gap_in_std is None
    assert "no runner-up" in choice.gap_sentence()


def test_pretraining_comparison(storage: Path) -> None:
    comparison = compare_pretraining(load_sweep(storage, "quick1"))
    assert comparison.best_pretrained is not None and comparison.best_pretrained.trial_id == "trial_00000"
    assert comparison.best_untrained is not None and comparison.best_untrained.trial_id == "trial_00001"
    assert list(comparison.per_encoder) == ["mobilenetv2"]  # resnet18 untrained failed


@pytest.mark.parametrize("spelling", ["None", "NONE", " none", ""])
def test_weights_none_in_any_spelling_is_untrained(tmp_path: Path, spelling: str) -> None:
    # Training loads nothing for `--weights None` (trainer.weights lower-cases and strips it), but the
    # report counted such a trial as "ImageNet (pretrained)" and printed a pretrained-minus-untrained
    # gain between two untrained runs.
    params = {"encoder": "vgg16", "batch_size": 4, "lr": 1e-3}
    trials = [FakeTrial({**params, "weights": spelling}, [0.7, 0.6]),
              FakeTrial({**params, "weights": "none"}, [0.5, 0.6])]  # fmt: skip
    make_sweep(tmp_path, "w", trials, with_study=False)
    comparison = compare_pretraining(load_sweep(tmp_path, "w"))
    assert comparison.best_pretrained is None and comparison.per_encoder == {}
    assert comparison.best_untrained is not None and comparison.best_untrained.trial_id == "trial_00000"
    assert not CVConfig(weights=spelling).pretrained
    assert CVConfig(weights="ImageNet").pretrained and CVConfig(weights="/w/encoder.h5").pretrained


def test_a_trial_pretrained_from_a_file_is_not_labelled_imagenet(tmp_path: Path) -> None:
    params = {"encoder": "vgg16", "batch_size": 4, "lr": 1e-3}
    trials = [FakeTrial({**params, "weights": "/w/vgg16-polyps.h5"}, [0.7, 0.6]),
              FakeTrial({**params, "weights": "none"}, [0.5, 0.6])]  # fmt: skip
    make_sweep(tmp_path, "f", trials, with_study=False)
    md = render_markdown(build_report(load_sweep(tmp_path, "f")))
    assert "pretrained from vgg16-polyps.h5" in md and "ImageNet" not in md


#: The static figures (report.md's PNGs) a report of the `storage` fixture's sweep draws, in order.
FIGURES = ("best_so_far", "optimisation_history", "parallel_coordinate", "fold_dice", "learning_curves")
#: Its interactive figures (report.html's plotly divs): the static ones and the importance bars.
PLOTS = (*FIGURES, "importance")


def _without_scripts(page: str) -> str:
    """The page with its inline scripts' bodies removed (plotly.js mentions URLs it never loads here:
    map tiles' attributions)."""
    return re.sub(r"<script[^>]*>.*?</script>", "<script></script>", page, flags=re.S)


def test_report_writes_html_md_and_best_json(storage: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert main(["report", "quick1", "--storage", str(storage), "--out", str(out)]) == 0
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for text in (html, md):
        for needle in ("Leaderboard", "Winner", "Table 2", "Pretrained against untrained",
                       "Parameter importance", "1.24 times the winner"):  # fmt: skip
            assert needle in text
    # Self-contained: no script, stylesheet or image fetched from anywhere; plotly.js inlined once.
    markup = _without_scripts(html)
    assert "<link" not in markup and not re.search(r"""(src|href)=["'](?!data:)""", markup)
    assert "cdn.plot.ly" not in markup and html.count("plotly.js v") == 1
    for name in PLOTS:
        assert f'id="plot-{name}"' in html
    # The winner's per-image table: sortable, and downloadable from the page and beside it.
    assert '<table class="sortable"><thead><tr><th>image</th><th>fold</th><th>Dice</th><th>IoU</th>' in html
    [link] = re.findall(r'<a download="per_image.csv" href="data:text/csv;base64,([^"]+)"', html)
    csv_text = (out / "per_image.csv").read_text()
    assert base64.b64decode(link).decode() == csv_text
    rows = csv_text.splitlines()
    assert rows[0] == "image,fold,dice,iou" and len(rows) == 1 + 12  # every out-of-fold image of the winner
    assert "| Dice" in md and "As CSV: [per_image.csv](per_image.csv)" in md
    assert "No images drawn: the winner's fold models are not kept" in md  # none kept in this sweep
    for needle in ("Run times and provenance", "Total compute:", "segmentation-models", "sweep command",
                   "`segsweep report quick1 --storage"):  # fmt: skip
        assert needle in md
    for name in FIGURES:
        assert f"figures/{name}.png" in md
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000

    best = read_json(out / "best.json")
    assert best["trial_id"] == "trial_00000"
    config, extras = load_config_file(out / "best.json")  # what `segsweep cv --config` reads
    assert config == CVConfig.from_dict(load_sweep(storage, "quick1").trials[0].config)
    assert extras["data"] == str(tmp_path / "data")


def test_best_json_carries_the_winners_runtime(storage: Path, tmp_path: Path) -> None:
    """`cv --config best.json` reruns with the winner's threads and precision (issue 21, case 3)."""
    cv_path = next(storage.glob("quick1/trials/trial_00000/cv.json"))
    cv = read_json(cv_path)
    runtime = {"mixed_precision": "auto", "mixed_precision_enabled": False, "threads": 1, "cpus": 8,
               "versions": {"tensorflow": "2.21.0"}}  # fmt: skip
    cv_path.write_text(json.dumps({**cv, "runtime": {**runtime, "earlier": {"threads": 2}}}))
    assert main(["report", "quick1", "--storage", str(storage), "--out", str(tmp_path / "r"), "--format", "json"]) == 0
    assert read_json(tmp_path / "r" / "best.json")["runtime"] == runtime
    _, extras = load_config_file(tmp_path / "r" / "best.json")
    assert extras["runtime"] == runtime


def test_report_default_folder_and_formats(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "quick1", "--storage", str(storage), "--format", "json"]) == 0
    assert sorted(p.name for p in (storage / "quick1" / "report").iterdir()) == ["best.json"]
    assert main(["report", "quick1", "--storage", str(storage), "--format", "pdf"]) == 2
    assert "--format" in capsys.readouterr().err


def test_unknown_sweep_and_no_completed_trial_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_sweep(tmp_path, "pruned", [FakeTrial({"encoder": "mobilenet", "weights": "none", "batch_size": 4,
                                               "lr": 1e-3}, [0.5], state="PRUNED")])  # fmt: skip
    assert main(["report", "nope", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no sweep named 'nope'" in err and "pruned" in err
    assert main(["report", "pruned", "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no trial that completed all its folds" in err and "1 pruned" in err
    assert "Traceback" not in err


def test_importance_needs_two_completed_trials(tmp_path: Path) -> None:
    trials = [FakeTrial({"encoder": "mobilenet", "weights": "none", "batch_size": 4, "lr": 1e-3}, [0.4, 0.5])]
    make_sweep(tmp_path, "one", trials)
    text = render_markdown(build_report(load_sweep(tmp_path, "one")))
    assert "needs at least 2 completed trials in the Optuna study; it has 1" in text
    # One trial is a single dot: a sentence instead of a figure (issue 23).
    assert "Optimisation history not drawn: 1 trial(s) with a score (trial #0 (trial_00000)" in text
    assert "optimisation_history.png" not in text and "Parallel coordinates not drawn" in text


def test_report_without_optuna_storage(tmp_path: Path) -> None:
    make_sweep(tmp_path, "nostudy", with_study=False)
    text = render_markdown(build_report(load_sweep(tmp_path, "nostudy")))
    assert "no Optuna storage at" in text
    assert "fold_dice.png" in text


def test_table2_shows_recorded_test_scores(storage: Path, tmp_path: Path) -> None:
    sweep = load_sweep(storage, "quick1")
    rows = [{"variant": "plain", "n_images": 120, "dice_mean": 0.81, "dice_std": 0.2, "iou_mean": 0.72,
             "iou_std": 0.21},
            {"variant": "tta", "n_images": 120, "dice_mean": 0.82, "dice_std": 0.19, "iou_mean": 0.73,
             "iou_std": 0.2}]  # fmt: skip
    record_test_scores(sweep.path, "trial_00000", {"images": "/test/images", "out": str(tmp_path / "p"), "rows": rows})
    record_test_scores(sweep.path, "trial_00002", {"images": "/test/images", "out": str(tmp_path / "q"), "rows": rows})
    text = render_markdown(build_report(sweep))
    table2 = text.split("## Table 2")[1].split("## Leaderboard")[0]
    assert "|  | Dice | IoU | Dice (flip test-time augmentation) | IoU (flip test-time augmentation) |" in table2
    row = "| Test set /test/images (120 images; mean ± std over images [95 % interval of the mean]) |"
    cells = ("0.8100 ± 0.2000 [95 % 0.7738 to 0.8462] | 0.7200 ± 0.2100 [95 % 0.6820 to 0.7580] | "
             "0.8200 ± 0.1900 [95 % 0.7857 to 0.8543] | 0.7300 ± 0.2000 [95 % 0.6938 to 0.7662] |")  # fmt: skip
    assert f"{row} {cells}" in table2
    assert table2.count("Test set /") == 1  # one row per test set; the other trial's scores are not the winner's
    assert "No test set scored yet" not in table2


def test_table2_has_one_row_per_test_set_with_the_variants_as_columns(storage: Path, tmp_path: Path) -> None:
    # Every variant (TTA, post-processing) was a row of its own: two test sets predicted plain, with
    # TTA and post-processed made six rows that read like six test sets.
    sweep = load_sweep(storage, "quick1")

    def row(variant: str, dice: float) -> dict[str, object]:
        return {"variant": variant, "n_images": 6, "dice_mean": dice, "dice_std": 0.1, "iou_mean": dice - 0.1,
                "iou_std": 0.1}  # fmt: skip

    older = record_test_scores(sweep.path, "trial_00000", {"images": "/a", "out": str(tmp_path / "a-old"),
                                                           "rows": [row("plain", 0.1)]})  # fmt: skip
    older.write_text(json.dumps({**json.loads(older.read_text()), "written": "2020-01-01T00:00:00+00:00"}))
    record_test_scores(sweep.path, "trial_00000", {"images": "/a", "out": str(tmp_path / "a"),
                                                   "rows": [row("plain", 0.5), row("tta", 0.6),
                                                            row("plain+min-area", 0.55)]})  # fmt: skip
    record_test_scores(sweep.path, "trial_00000", {"images": "/b", "out": str(tmp_path / "b"),
                                                   "rows": [row("plain", 0.7)]})  # fmt: skip
    table2 = render_markdown(build_report(sweep)).split("## Table 2")[1].split("## Leaderboard")[0]
    lines = [line for line in table2.splitlines() if line.startswith("| ")]
    assert lines[0] == (
        "|  | Dice | IoU | Dice (flip test-time augmentation) | IoU (flip test-time augmentation) "
        "| Dice (plain, post-processed: min-area) | IoU (plain, post-processed: min-area) |"
    )
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in lines[1:]}
    assert len(rows) == 3 and "Development set" in lines[1]
    label = "images; mean ± std over images [95 % interval of the mean])"
    # t(0.975, 5) = 2.5706: ± 2.5706 * 0.1 / sqrt(6) = ± 0.1049
    assert [cell.split(" [")[0] for cell in rows[f"| Test set /a (6 {label}"][:6]] == [
        "0.5000 ± 0.1000",
        "0.4000 ± 0.1000",
        "0.6000 ± 0.1000",
        "0.5000 ± 0.1000",
        "0.5500 ± 0.1000",
        "0.4500 ± 0.1000",
    ]  # fmt: skip  (its newest prediction only: the older plain 0.1 is not mixed in)
    assert rows[f"| Test set /a (6 {label}"][0] == "0.5000 ± 0.1000 [95 % 0.3951 to 0.6049]"
    assert rows[f"| Test set /b (6 {label}"] == [
        "0.7000 ± 0.1000 [95 % 0.5951 to 0.8049]", "0.6000 ± 0.1000 [95 % 0.4951 to 0.7049]", "–", "–", "–", "– |"
    ]  # fmt: skip


def test_table2_names_post_processed_rows(storage: Path, tmp_path: Path) -> None:
    # `predict --postprocess` records rows plain+min-area, tta+fill-holes, ...: each was labelled
    # "plain" in Table 2, so four different "plain" test Dice stood there side by side.
    sweep = load_sweep(storage, "quick1")
    names = ["plain", "tta", "plain+min-area", "tta+min-area+fill-holes"]
    rows = [{"variant": name, "n_images": 6, "dice_mean": 0.5 + i / 10, "dice_std": 0.1, "iou_mean": 0.4,
             "iou_std": 0.1} for i, name in enumerate(names)]  # fmt: skip
    record_test_scores(sweep.path, "trial_00000", {"images": "/t", "out": str(tmp_path / "p"), "rows": rows})
    table2 = render_markdown(build_report(sweep)).split("## Table 2")[1].split("## Leaderboard")[0]
    labels = re.findall(r"\| Dice \((.*?)\) \|", table2)
    assert labels == ["flip test-time augmentation", "plain, post-processed: min-area",
                      "flip test-time augmentation, post-processed: min-area, fill-holes"]  # fmt: skip
    assert "| Dice | IoU |" in table2  # plain's columns
    assert "test Dice 0.5000" in table2  # the gap is the plain row's


def test_html_escapes_text(tmp_path: Path) -> None:
    params = {"encoder": "mobilenet", "weights": "none", "batch_size": 4, "lr": 1e-3}
    trials = [
        FakeTrial(params, [0.4, 0.5], reason="<b>bold</b>"),
        FakeTrial(params, [], state="FAILED", reason="<script>alert(1)</script>"),
    ]
    make_sweep(tmp_path, "esc", trials)
    html = render_html(build_report(load_sweep(tmp_path, "esc")))
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize(
    ("fold_drops", "epochs", "expected"),
    [
        ([[5, 9], [6], [7, 12]], 20, [6, 12]),  # 1st: median 6; 2nd: median of 9, 12, never = 12
        ([[5, 9], [6], [7]], 20, [6]),  # only one fold of three cut twice: the final model cuts once
        ([[7], [], [], [], []], 20, []),  # one fold of five cut: most did not, so no cut
        ([[3], []], 10, []),  # a tie between a cut and no cut: no cut (the median rounds up, to never)
        ([[], []], 10, []),
        ([[3], [4]], 10, [4]),  # 3.5 rounds up
        ([[3, 4], [3, 3]], 10, [3, 4]),  # 2nd median 3.5 -> 4, after the 1st
        ([[2, 3], [2, 2]], 10, [2, 3]),  # 2nd median 2.5 -> 3
        ([[4, 4], [4, 4]], 10, [4, 5]),  # a cut not after the previous one moves one epoch later
        ([[8, 10]], 10, [8]),  # a cut after the last epoch changes nothing
    ],
)
def test_imitated_schedule(fold_drops: list[list[int]], epochs: int, expected: list[int]) -> None:
    assert imitated_schedule(fold_drops, epochs) == expected


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    return None


@pytest.mark.slow  # ~20 s: two Chromium starts
def test_report_html_opens_in_headless_chromium_offline(storage: Path, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium here: install Debian's `chromium` package to run this test")
    out = tmp_path / "report"
    assert main(["report", "quick1", "--storage", str(storage), "--out", str(out), "--format", "html"]) == 0
    screenshot = tmp_path / "shot.png"
    url = (out / "report.html").as_uri()
    base = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,4000", "--virtual-time-budget=5000",
    ]  # fmt: skip
    # Offline for real where possible: a network namespace with nothing but loopback.
    if shutil.which("unshare") and os.geteuid() == 0:
        base = ["unshare", "-n", *base]
    env = {**os.environ, "HOME": str(tmp_path)}
    subprocess.run([*base, f"--screenshot={screenshot}", url], check=True, timeout=120, capture_output=True, env=env)
    dom = subprocess.run(
        [*base, "--dump-dom", url], check=True, timeout=120, capture_output=True, text=True, env=env
    ).stdout
    assert "Leaderboard" in dom and dom.count('class="main-svg"') >= len(PLOTS)  # plotly drew every figure
    assert "js-plotly-plot" in dom
    from PIL import Image

    with Image.open(screenshot) as shot:
        # The page rendered with its figures: far more colours than text on white.
        assert len(shot.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 200


def test_best_json_of_winner_with_unusable_config_is_an_error(tmp_path: Path) -> None:
    path = make_sweep(tmp_path, "bad", [FakeTrial({"encoder": "mobilenet", "weights": "none", "batch_size": 4,
                                                   "lr": 1e-3}, [0.4, 0.5])])  # fmt: skip
    info = read_json(path / "trials" / "trial_00000" / "trial.json")
    info["config"]["colour"] = "red"
    (path / "trials" / "trial_00000" / "trial.json").write_text(__import__("json").dumps(info))
    with pytest.raises(SegsweepError, match="colour"):
        build_report(load_sweep(tmp_path, "bad"))


def test_importance_of_a_large_study_uses_a_bounded_forest() -> None:
    from reports.report import FANOVA_FULL_FOREST_UP_TO, FANOVA_LARGE_STUDY_DEPTH, _fanova_evaluator

    small, large = _fanova_evaluator(FANOVA_FULL_FOREST_UP_TO), _fanova_evaluator(FANOVA_FULL_FOREST_UP_TO + 1)
    assert small._evaluator._forest.max_depth == 64  # Optuna's default forest
    assert large._evaluator._forest.max_depth == FANOVA_LARGE_STUDY_DEPTH


def _start_sweep(storage: Path, winner_shift: float) -> None:
    """A starting point and one proposal on two folds of 10 images; the proposal scores ``winner_shift``
    above it on every image but alternately 0.05 above and below that."""
    base = [0.5 + 0.3 * (i % 7) / 7 for i in range(20)]

    def trial(lr: float, shift: list[float], start: str | None = None) -> FakeTrial:
        images = [b + s for b, s in zip(base, shift, strict=True)]
        folds = [images[:10], images[10:]]
        params = {"encoder": "resnet18", "weights": "imagenet", "batch_size": 8, "lr": lr}
        return FakeTrial(params, [sum(f) / 10 for f in folds], image_dice=folds, start=start)

    noisy = [winner_shift + (0.05 if i % 2 else -0.05) for i in range(20)]
    make_sweep(storage, "s", [trial(1e-3, [0.0] * 20, start="hand-pick"), trial(2e-3, noisy)])


@pytest.mark.parametrize(
    ("shift", "said"),
    [
        (0.1, "+0.100 Dice over your starting point hand-pick, 95 % interval"),
        (0.004, "tied with your starting point hand-pick: +0.004 Dice"),
    ],
)
def test_report_md_html_and_json_state_the_winners_evidence(tmp_path: Path, shift: float, said: str) -> None:
    _start_sweep(tmp_path, shift)
    out = tmp_path / "r"
    assert main(["report", "s", "--storage", str(tmp_path), "--out", str(out)]) == 0
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    headline = f"Winner trial #1 (trial_00001): {said}"
    assert "## The winner's evidence" in md and headline in md
    assert "| starting point hand-pick (runner-up) | #0 (trial_00000) | COMPLETE | 20 |" in md
    assert headline in page and "The winner&#x27;s evidence" in page
    evidence = read_json(out / "best.json")["evidence"]
    assert evidence["headline"].startswith(headline)
    [compared] = evidence["comparisons"]
    assert compared["start"] == "hand-pick" and compared["n_pairs"] == 20
    assert compared["verdict"] == ("beat" if shift > 0.05 else "tie")
    assert evidence["tied_with_winner"] == ([] if shift > 0.05 else ["trial_00000"])


def test_report_of_a_sweep_without_per_image_scores_says_why(tmp_path: Path) -> None:
    params = {"encoder": "mobilenet", "weights": "none", "batch_size": 4}
    trials = [
        FakeTrial({**params, "lr": 1e-3}, [0.4, 0.5], image_scores=False),
        FakeTrial({**params, "lr": 2e-3}, [0.3, 0.5], image_scores=False),
    ]
    make_sweep(tmp_path, "s", trials)
    report = build_report(load_sweep(tmp_path, "s"))
    [section] = [s for s in report.sections if s.title == "The winner's evidence"]
    assert len(section.blocks) == 2 and str(section.blocks[1]).startswith("No paired evidence: the winner's folds")
    assert report.best["evidence"]["comparisons"] == []


def test_report_flags_a_winner_at_the_edge_of_the_space_and_writes_the_widened_space(tmp_path: Path) -> None:
    # The winner trained the space's most epochs (8) and its validation IoU was still rising at the end.
    params = {"encoder": "resnet18", "weights": "none", "batch_size": 8, "lr": 1e-3}
    trials = [
        FakeTrial({**params, "epochs": 8}, [0.7, 0.7], epochs=8),
        FakeTrial({**params, "epochs": 6, "lr": 2e-3}, [0.6, 0.6], epochs=6),
    ]
    make_sweep(tmp_path, "s", trials, space=SPACE_WITH_EPOCHS, with_study=False)
    out = tmp_path / "r"
    assert main(["report", "s", "--storage", str(tmp_path), "--out", str(out), "--format", "md,json"]) == 0
    md = (out / "report.md").read_text()
    assert "## Is the space too small?" in md
    assert "The winner's epochs 8 is at the upper bound of the space's range 4 to 8" in md
    command = f"segsweep sweep run --warm-start s --storage {tmp_path} --space {out / 'widened-space.yaml'} "
    assert command in md
    edges = read_json(out / "best.json")["space_edges"]
    [flag] = edges["flags"]
    assert (flag["param"], flag["side"], flag["widened"]["high"]) == ("epochs", "upper", 16)
    assert edges["command"].startswith(command)
    widened = load_space(out / "widened-space.yaml")  # the file the command names, a space segsweep reads
    assert widened.name == "tiny-widened" and widened.params["epochs"].high == 16


def test_one_fold_trials_show_no_spread(tmp_path: Path) -> None:
    # A one-fold trial printed "0.4000 ± 0.0000": a spread measured to be nil, where none was measured.
    params = {"encoder": "mobilenet", "weights": "none", "batch_size": 4}
    trials = [FakeTrial({**params, "lr": 1e-3}, [0.4], n_folds=1), FakeTrial({**params, "lr": 2e-3}, [0.3], n_folds=1)]
    make_sweep(tmp_path, "one", trials)
    sweep = load_sweep(tmp_path, "one")
    md = render_markdown(build_report(sweep))
    assert "± 0.0000" not in md and "mean Dice 0.4000 ± –" in md
    assert "| #0 (trial_00000) | 0.4000 ± – |" in md  # the pretraining table
    assert "0.4000 ± –" in format_leaderboard(sweep)  # `sweep status` shares the formatter


def test_test_scores_carry_a_95_percent_interval_over_images(storage: Path, tmp_path: Path) -> None:
    # 10 test images: Dice 0.62 ± 0.2 pins the mean down to about ± 0.14, so the CV estimate (0.64)
    # may be said to agree only with that interval beside it.
    sweep = load_sweep(storage, "quick1")
    row = {"variant": "plain", "n_images": 10, "dice_mean": 0.62, "dice_std": 0.2, "iou_mean": 0.5, "iou_std": 0.2}
    record_test_scores(sweep.path, "trial_00000", {"images": "/t", "out": str(tmp_path / "p"), "rows": [row]})
    table2 = render_markdown(build_report(sweep)).split("## Table 2")[1].split("## Leaderboard")[0]
    # t(0.975, 9) = 2.2622: 0.62 ± 2.2622 * 0.2 / sqrt(10) = 0.62 ± 0.1431
    assert "| 0.6200 ± 0.2000 [95 % 0.4769 to 0.7631] |" in table2
    assert "test Dice 0.6200, 95 % interval 0.4769 to 0.7631 over 10 images" in table2
    assert "inside the test set's 95 % interval (±0.1431)" in table2
    assert "holds on the test set" not in table2


def test_gap_sentence_does_not_confirm_the_cv_estimate_outside_the_test_interval() -> None:
    from reports.report import generalisation_gap_sentence

    outside = generalisation_gap_sentence(0.80, 0.05, 0.75, (0.74, 0.76), 500)
    assert "does not confirm" in outside and "FLAG" not in outside
    one_image = generalisation_gap_sentence(0.80, 0.05, 0.75, None, 1)
    assert "neither confirms nor refutes" in one_image


def test_importance_and_plots_leave_out_proposals_answered_from_the_study(tmp_path: Path) -> None:
    import optuna

    from sweeps.folder import STUDY_REPEAT_ATTR

    params = {"encoder": "mobilenet", "weights": "none", "batch_size": 4}
    make_sweep(
        tmp_path, "s", [FakeTrial({**params, "lr": 1e-3}, [0.4, 0.5]), FakeTrial({**params, "lr": 2e-3}, [0.6, 0.5])]
    )
    study = optuna.load_study(study_name="s", storage=load_sweep(tmp_path, "s").optuna_storage_url)
    first = study.trials[0]
    for _ in range(3):  # the searcher's repeats of trial 0 (sweeps._optuna): no trial folder, never trained
        study.add_trial(optuna.trial.create_trial(
            value=first.value, params=first.params, distributions=first.distributions,
            user_attrs={STUDY_REPEAT_ATTR: first.number},
        ))  # fmt: skip
    text = render_markdown(build_report(load_sweep(tmp_path, "s")))
    assert "over the 2 completed trials" in text


def test_report_md_lists_the_first_rows_of_a_long_table_and_html_every_row() -> None:
    from reports.report import Report, Section, Table, render_html, render_markdown

    rows = [[f"img{i:03d}", f"{i / 100:.4f}"] for i in range(30)]
    table = Table(["image", "Dice"], rows, sortable=True, csv_name="per_image.csv", csv=b"x", md_rows=20)
    report = Report("r", [Section("The winner on images", [table])], {}, {})
    md = render_markdown(report)
    assert "| img019 |" in md and "| img020 |" not in md
    assert "The first 20 of 30 rows; report.html has them all." in md and "As CSV: [per_image.csv]" in md
    assert "img029" in render_html(report)
