"""search_spaces: built-ins, YAML checks with line numbers, Optuna sampling, pickling, to_cv_config."""

from __future__ import annotations

import math
import pickle
import re
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest

from search_spaces import BUILTIN_SPACES, DefineByRun, SearchSpace, builtin_space_path, load_space
from segsweep.base.errors import ConfigError
from trainer.config import ENCODERS, CVConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

PAPER_ENCODERS = (
    "efficientnetb0", "efficientnetb1", "efficientnetb2", "efficientnetb3", "mobilenet", "mobilenetv2",
    "seresnet18", "seresnet34", "seresnet50", "inceptionv3", "resnet18", "resnet34", "resnet50",
    "vgg16", "vgg19",
)  # fmt: skip

#: A user space with conditions, a step grid, an int range and PyYAML's dot-less `1e-4` (a string).
CONDITIONAL = """\
name: conditional
params:
  encoder: {type: categorical, choices: [mobilenetv2, resnet18]}
  weights: {type: categorical, choices: [imagenet, none]}
  lr_factor: {type: float, low: 0.1, high: 0.5, when: {weights: imagenet}}
  lr_patience: {type: int, low: 2, high: 6, step: 2, when: {weights: none, encoder: [resnet18]}}
  image_size: {type: int, low: 64, high: 128, step: 32}
  batch_size: {type: int, low: 2, high: 16, log: true}
  lr: {type: float, low: 1e-4, high: 1e-2, log: true}
fixed:
  folds: 2
  epochs: 1
"""


def write_space(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def run_study(space: SearchSpace, n_trials: int = 30, seed: int = 0) -> optuna.Study:
    """A real in-memory TPE study whose objective checks every sampled configuration."""
    define_by_run = space.define_by_run

    def objective(trial: optuna.Trial) -> float:
        constants = define_by_run(trial)
        assert constants == dict(space.fixed)
        sampled = dict(trial.params)
        for name, value in sampled.items():
            param = space.params[name]
            assert param.contains(value), (name, value)
            assert param.is_active(sampled), f"{name} sampled although its condition {param.when} fails"
        for name, param in space.params.items():
            if name not in sampled:
                assert not param.is_active(sampled), f"{name} missing although its condition holds"
        config = space.to_cv_config(sampled)  # validates
        for name, value in {**space.fixed, **sampled}.items():
            assert getattr(config, name) == value
        return -abs(math.log10(config.lr) + 3)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=n_trials)
    assert len(study.trials) == n_trials
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    return study


# -- built-ins -------------------------------------------------------------------------------------


def test_builtin_names_match_the_yaml_files() -> None:
    folder = builtin_space_path("paper").parent
    assert sorted(p.stem for p in folder.glob("*.yaml")) == sorted(BUILTIN_SPACES)


@pytest.mark.parametrize("name", BUILTIN_SPACES)
def test_each_builtin_loads_and_validates(name: str) -> None:
    space = load_space(name)
    assert space.name == name
    assert space.source == str(builtin_space_path(name))
    assert space.description
    CVConfig.from_dict(dict(space.fixed)).validate()


def test_paper_space_is_the_papers() -> None:
    space = load_space("paper")
    assert list(space.params) == ["encoder", "weights", "batch_size", "epochs", "lr"]
    assert space.params["encoder"].choices == PAPER_ENCODERS
    assert set(PAPER_ENCODERS) <= set(ENCODERS)
    assert space.params["weights"].choices == ("imagenet", "none")
    assert space.params["batch_size"].choices == (8, 16, 30)
    epochs = space.params["epochs"]
    assert (epochs.type, epochs.low, epochs.high, epochs.log) == ("int", 10, 40, False)
    lr = space.params["lr"]
    assert (lr.type, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    assert space.fixed["image_size"] == 256
    assert space.fixed["folds"] == 10


def test_quick_space_fits_a_cpu() -> None:
    space = load_space("quick")
    assert set(space.params["encoder"].choices) <= {"mobilenetv2", "efficientnetb0", "resnet18"}
    assert space.fixed["weights"] == "none"
    assert "weights" not in space.params
    assert space.params["batch_size"].choices == (4, 8)
    assert (space.params["epochs"].low, space.params["epochs"].high) == (1, 2)
    lr = space.params["lr"]
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)
    assert space.fixed["image_size"] == 64
    assert space.fixed["folds"] == 2
    assert "cannot download" in builtin_space_path("quick").read_text()


def test_cpu_space_searches_the_untrained_levers() -> None:
    space = load_space("cpu")
    assert set(space.params) == {"encoder", "arch", "loss", "batch_size", "lr", "epochs", "augment"}
    assert set(space.params["encoder"].choices) == {"mobilenetv2", "efficientnetb0", "resnet18", "seresnet18"}
    assert set(space.params["arch"].choices) == {"unet", "linknet"}  # FPN: 2.5x the epoch time, no better
    # The hand pick trained 24 epochs beat its 12 (0.753 vs 0.668): the range reaches past both.
    epochs = space.params["epochs"]
    assert (epochs.low, epochs.high, epochs.step) == (6, 36, 6)
    assert set(space.params["loss"].choices) == {"iou", "dice", "bce_dice"}
    assert space.params["augment"].choices == (True, False)
    assert space.fixed == {"weights": "none", "image_size": 128, "folds": 3}
    header = builtin_space_path("cpu").read_text()
    assert "measured" in header and "128" in header and "3 folds" in header


# -- sampling with Optuna --------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTIN_SPACES)
def test_builtin_study_samples_valid_configs(name: str) -> None:
    run_study(load_space(name))


def test_conditional_params_appear_only_when_their_condition_holds(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, CONDITIONAL))
    assert space.params["lr"].low == 1e-4
    assert space.params["lr_patience"].when == {"weights": ("none",), "encoder": ("resnet18",)}
    study = run_study(space)
    with_factor = [t for t in study.trials if "lr_factor" in t.params]
    with_patience = [t for t in study.trials if "lr_patience" in t.params]
    assert with_factor and len(with_factor) < 30
    assert all(t.params["weights"] == "imagenet" for t in with_factor)
    assert with_patience
    assert all(t.params["weights"] == "none" and t.params["encoder"] == "resnet18" for t in with_patience)
    assert {t.params["image_size"] for t in study.trials} <= {64, 96, 128}


# -- pickling (Ray checkpoints its searcher, define-by-run included) ---------------------------------


def _params_of(study: optuna.Study) -> list[dict[str, Any]]:
    return [t.params for t in study.trials]


@pytest.mark.parametrize("dumps_loads", ["pickle", "cloudpickle"])
def test_define_by_run_survives_pickling(tmp_path: Path, dumps_loads: str) -> None:
    module: Any = pickle if dumps_loads == "pickle" else pytest.importorskip("cloudpickle")
    space = load_space(write_space(tmp_path, CONDITIONAL))
    define_by_run = space.define_by_run
    restored = module.loads(module.dumps(define_by_run))
    assert isinstance(restored, DefineByRun)
    assert restored == define_by_run
    assert restored.space == space

    def sample(function: DefineByRun) -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=3))
        study.optimize(lambda trial: float(len(function(trial))), n_trials=12)
        return _params_of(study)

    assert sample(restored) == sample(define_by_run)


def test_ray_optuna_search_takes_the_define_by_run_and_checkpoints(tmp_path: Path) -> None:
    optuna_search = pytest.importorskip("ray.tune.search.optuna")
    space = load_space("quick")
    searcher = optuna_search.OptunaSearch(space=space.define_by_run, metric="dice", mode="max", seed=0)
    config = searcher.suggest("trial_0")
    assert set(config) == set(space.params) | set(space.fixed)
    assert space.to_cv_config(config).image_size == 64
    searcher.on_trial_complete("trial_0", {"dice": 0.5})
    checkpoint = tmp_path / "searcher.pkl"
    searcher.save(str(checkpoint))
    restored = optuna_search.OptunaSearch(space=space.define_by_run, metric="dice", mode="max")
    restored.restore(str(checkpoint))
    assert restored._space == space.define_by_run
    following = restored.suggest("trial_1")
    assert all(space.params[name].contains(following[name]) for name in space.params)


# -- validation errors name the file and the line ------------------------------------------------------

# Each case marks its offending line with `# <-`; the error must name that line and a fix.
BAD_SPACES: dict[str, tuple[str, str]] = {
    "low above high": (
        """\
        params:
          epochs: {type: int, low: 40, high: 10}  # <-
        """,
        "swap them",
    ),
    "log with low <= 0": (
        """\
        params:
          lr:
            type: float
            low: 0.0  # <-
            high: 0.1
            log: true
        """,
        "log scale needs low > 0",
    ),
    "unknown type": (
        """\
        params:
          lr:
            type: loguniform  # <-
            low: 1.0e-4
            high: 1.0e-2
        """,
        "use one of categorical, int, float",
    ),
    "empty choices": (
        """\
        params:
          encoder:
            type: categorical
            choices: []  # <-
        """,
        "list at least one value",
    ),
    "condition on an unknown parameter": (
        """\
        params:
          encoder: {type: categorical, choices: [resnet18]}
          lr_factor:
            type: float
            low: 0.1
            high: 0.5
            when:
              weigths: imagenet  # <-
        """,
        "not a parameter of this space",
    ),
    "condition on a later parameter": (
        """\
        params:
          lr_factor:
            type: float
            low: 0.1
            high: 0.5
            when: {weights: imagenet}  # <-
          weights: {type: categorical, choices: [imagenet, none]}
        """,
        "move 'weights' above 'lr_factor'",
    ),
    "condition that never holds": (
        """\
        params:
          weights: {type: categorical, choices: [imagenet, none]}
          lr_factor:
            type: float
            low: 0.1
            high: 0.5
            when:
              weights: imagnet  # <-
        """,
        "never holds",
    ),
    "encoder not in ENCODERS": (
        """\
        params:
          encoder:
            type: categorical
            choices:
              - resnet18
              - efficientnetb9  # <-
        """,
        "unknown encoder 'efficientnetb9'",
    ),
    "fixed image size not a multiple of 32": (
        """\
        params:
          encoder: {type: categorical, choices: [resnet18]}
        fixed:
          image_size: 100  # <-
        """,
        "not a multiple of 32",
    ),
    "image size range off the 32 grid": (
        """\
        params:
          image_size:
            type: int
            low: 64  # <-
            high: 128
        """,
        "image size 65 is not a multiple of 32 (the encoders downsample 32x); use e.g. 64; set low and step",
    ),
    "image size choice off the 32 grid": (
        """\
        params:
          image_size: {type: categorical, choices: [64, 90]}  # <-
        """,
        "not a multiple of 32",
    ),
    "parameter that is not a CVConfig field": (
        """\
        params:
          learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2}  # <-
        """,
        "not a CVConfig field",
    ),
    "fixed key that is not a CVConfig field": (
        """\
        params:
          lr: {type: float, low: 1.0e-4, high: 1.0e-2}
        fixed:
          fold: 5  # <-
        """,
        "did you mean 'folds'",
    ),
    "duplicate parameter": (
        """\
        params:
          lr: {type: float, low: 1.0e-4, high: 1.0e-2}
          lr: {type: float, low: 1.0e-3, high: 1.0e-2}  # <-
        """,
        "appears twice (first on line 2)",
    ),
    "type that does not fit the field": (
        """\
        params:
          lr:
            type: int  # <-
            low: 1
            high: 2
        """,
        "use type: float",
    ),
    "log with a float step": (
        """\
        params:
          lr:
            type: float
            low: 1.0e-4
            high: 1.0e-2
            log: true
            step: 1.0e-4  # <-
        """,
        "cannot combine a log scale with a step",
    ),
    "int step that misses high": (
        """\
        params:
          epochs:
            type: int
            low: 10
            high: 40
            step: 7  # <-
        """,
        "use high: 38 or high: 45",
    ),
    "both searched and fixed": (
        """\
        params:
          folds: {type: int, low: 2, high: 5}  # <-
        fixed:
          folds: 10
        """,
        "both searched and fixed",
    ),
    "missing type": (
        """\
        params:
          encoder:  # <-
            choices: [resnet18]
        """,
        "add `type: categorical|int|float`",
    ),
    "unknown parameter key": (
        """\
        params:
          lr:
            type: float
            low: 1.0e-4
            high: 1.0e-2
            logg: true  # <-
        """,
        "did you mean 'log'",
    ),
    "batch size below one": (
        """\
        params:
          batch_size: {type: categorical, choices: [0, 8]}  # <-
        """,
        "batch size must be at least 1",
    ),
    "epochs beyond the bound": (
        """\
        params:
          epochs:
            type: int
            low: 10
            high: 54881351  # <-
        """,
        "epochs 54881351 is more than 10000, the most segsweep trains",
    ),
    "a high beyond any machine integer": (
        """\
        params:
          epochs:
            type: int
            low: 1
            high: 99999999999999999999999  # <-
        """,
        "more than 10000, the most segsweep trains",
    ),
    "image size range beyond the bound": (
        """\
        params:
          image_size:
            type: int
            low: 64
            high: 8192  # <-
            step: 32
        """,
        "image size 8192 is more than 4096 px",
    ),
    "an infinite learning rate": (
        """\
        params:
          lr:
            type: float
            low: 1.0e-4
            high: 1e400  # <-
        """,
        "learning rate must be a positive finite number, got inf",
    ),
    "searched seed": (
        """\
        params:
          lr: {type: float, low: 1.0e-4, high: 1.0e-2}
          seed: {type: int, low: 0, high: 5}  # <-
        """,
        "'seed' is the sweep's, not the space's (every trial trains with the sweep's seed, so that all trials "
        "split the same folds); remove it from the space and pass --seed to `segsweep sweep run`",
    ),
    "fixed seed": (
        """\
        params:
          lr: {type: float, low: 1.0e-4, high: 1.0e-2}
        fixed:
          seed: 3  # <-
        """,
        "pass --seed to `segsweep sweep run`",
    ),
    "broken YAML": (
        """\
        params:
          lr: {type: float, low: 1.0e-4, high: 1.0e-2
        fixed:  # <-
          folds: 2
        """,
        "not valid YAML",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SPACES))
def test_validation_errors_name_file_line_and_fix(tmp_path: Path, case: str) -> None:
    text, fix = BAD_SPACES[case]
    text = textwrap.dedent(text)
    line = next(i for i, row in enumerate(text.splitlines(), start=1) if row.rstrip().endswith("# <-"))
    path = write_space(tmp_path, text, name="my-space.yaml")
    with pytest.raises(ConfigError) as caught:
        load_space(path)
    message = str(caught.value)
    assert re.match(rf"{re.escape(str(path))}, line {line}(, column \d+)?: ", message), message
    assert fix in message and "\n" not in message, message


def test_empty_file_and_missing_params_say_what_to_write(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty; write a `params:` mapping"):
        load_space(write_space(tmp_path, "# nothing yet\n"))
    with pytest.raises(ConfigError, match=r"line 1: no `params:` mapping"):
        load_space(write_space(tmp_path, "fixed:\n  folds: 2\n"))


def test_unknown_name_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown search space 'papr'; did you mean 'paper'\\? use a built-in"):
        load_space("papr")
    with pytest.raises(ConfigError, match="unknown search space 'xyz'; use a built-in"):  # nothing close: no hint
        load_space("xyz")
    with pytest.raises(ConfigError, match="unknown built-in search space 'cpuu'; did you mean 'cpu'\\? choose one of"):
        builtin_space_path("cpuu")
    with pytest.raises(ConfigError, match="cannot read search space file"):
        load_space(tmp_path / "absent.yaml")


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    space = load_space(write_space(tmp_path, "params:\n  lr: {type: float, low: 0.001, high: 0.01}\n", "mine.yml"))
    assert space.name == "mine"
    assert space.fixed == {}


# -- to_cv_config and to_dict --------------------------------------------------------------------------


def test_to_cv_config_overrides_win() -> None:
    space = load_space("paper")
    params = {"encoder": "resnet18", "weights": "none", "batch_size": 8, "epochs": 30, "lr": 1e-3}
    config = space.to_cv_config(params, {"epochs": 1, "image_size": 64, "folds": 2, "limit": 6})
    assert (config.epochs, config.image_size, config.folds, config.limit) == (1, 64, 2, 6)
    assert (config.encoder, config.batch_size, config.lr, config.loss) == ("resnet18", 8, 1e-3, "iou")
    # An override of None is an option the user did not give.
    config = space.to_cv_config(params, {"epochs": None, "limit": None})
    assert (config.epochs, config.image_size, config.limit) == (30, 256, None)


def test_to_cv_config_rejects_unusable_values() -> None:
    space = load_space("quick")
    params = {"encoder": "resnet18", "batch_size": 4, "epochs": 1, "lr": 1e-3}
    with pytest.raises(ConfigError, match=r"search space 'quick'.*image size 100 is not a multiple of 32"):
        space.to_cv_config(params, {"image_size": 100})
    with pytest.raises(ConfigError, match="unknown key"):
        space.to_cv_config({**params, "learning_rate": 0.1})


@pytest.mark.parametrize("name", [*BUILTIN_SPACES, "conditional"])
def test_to_dict_round_trips(tmp_path: Path, name: str) -> None:
    space = load_space(write_space(tmp_path, CONDITIONAL) if name == "conditional" else name)
    data = space.to_dict()
    assert data["name"] == space.name and data["source"] == space.source
    assert SearchSpace.from_dict(data) == space
    assert pickle.loads(pickle.dumps(space)) == space


def test_from_dict_checks_like_a_file() -> None:
    data = load_space("quick").to_dict()
    data["params"]["epochs"]["low"] = 5
    expected = r"^a recorded search space: parameter 'epochs': low 5 is greater than high 2"
    with pytest.raises(ConfigError, match=expected):
        SearchSpace.from_dict(data)
