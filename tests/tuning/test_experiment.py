"""Experiment files: the shipped ones load, and every bad value names the file and key."""

from __future__ import annotations

import pytest

from carclf.config import ConfigError, RunSettings, read_toml
from tuning.experiment import DEMO_EXPERIMENT, load_experiment
from tuning.search_space import parse_space

EXPERIMENTS = DEMO_EXPERIMENT.parent


@pytest.mark.parametrize("name", ["demo.toml", "stanford_cars.toml"])
def test_shipped_experiments_load(name):
    experiment = load_experiment(EXPERIMENTS / name)
    assert {"batch_size", "learning_rate", "lr_decay", "unfreeze_depth"} <= set(experiment.search.space)
    assert experiment.search.start[0] == {"batch_size": 32, "learning_rate": 0.005, "lr_decay": 0.0001, "unfreeze_depth": 0, **(
        {"dropout": 0.2} if "dropout" in experiment.search.space else {}), **(
        {"head_epochs": 0} if "head_epochs" in experiment.search.space else {})}
    assert experiment.trial_settings().train.epochs == experiment.scheduler.max_epochs


def test_stanford_experiment_is_a_gpu_imagenet_run():
    experiment = load_experiment(EXPERIMENTS / "stanford_cars.toml")
    assert experiment.settings.data.image_size == 224 and experiment.settings.model.weights == "imagenet"
    assert 0 < experiment.resources.gpus_per_trial < 1


def test_the_longest_warm_up_is_known_to_the_plan():
    assert load_experiment().warm_up_epochs() == 2  # head_epochs { choice = [0, 2] } with unfreeze_depth 0..4
    assert load_experiment(overrides=["search.space.unfreeze_depth={ choice = [0] }"]).warm_up_epochs() == 0  # head-only trials


def test_demo_defaults():
    experiment = load_experiment()
    assert experiment.settings.data.format == "synthetic" and experiment.resources.gpus_per_trial == 0
    assert experiment.run_dir.name == "demo"


def _write(tmp_path, text):
    path = tmp_path / "exp.toml"
    path.write_text(DEMO_EXPERIMENT.read_text() + "\n" + text)
    return path


@pytest.mark.parametrize(
    "overrides, message",
    [(["train.learning_rate=0"], r"\[train\]: key learning_rate must be > 0"),
     (["data.validation_fraction=1.0"], r"\[data\]: key validation_fraction must be strictly between 0 and 1"),
     (["search.num_samples='many'"], r"\[search\]: key 'num_samples' must be int, got str"),
     (["resources.gpus_per_trial=-1"], r"\[resources\]: key gpus_per_trial must be >= 0"),
     (["scheduler.grace_period=9"], r"\[scheduler\]: key grace_period must be in 1\.\.max_epochs"),
     (["search.space.unfreeze_depth={ randint = [0, 20] }"], r"\[search\.space\] unfreeze_depth: value 20 is not allowed.*0\.\.16"),
     (["search.space.learning_rate={ loguniform = [0.0, 0.1] }"], r"\[search\.space\] learning_rate: loguniform needs low > 0"),
     (["search.space.colour={ choice = [1] }"], r"\[search\.space\] colour: not a tunable key"),
     (["search.space.batch_size={ normal = [1, 2] }"], r"\[search\.space\] batch_size: must be one distribution"),
     (["search.space.batch_size={ choice = [8], randint = [1, 2] }"], r"\[search\.space\] batch_size: must be one distribution"),
     (["search.space.batch_size={ uniform = [8, 16] }"], r"\[search\.space\] batch_size: takes whole numbers: use randint"),
     (["search.space=3"], r"\[search\]: key 'space' must be dict, got int 3"),
     (["data.format='zip'"], r"\[data\]: key format must be one of"),
     (["search.algorithm='grid'"], r"\[search\]: key algorithm must be one of \('auto', 'tpe', 'gp', 'random'\)"),
     (["search.algorithm='optuna'"], r"\[search\]: key algorithm 'optuna' is now named 'tpe'"),
     (["search.stopped_trials='forget'"], r"\[search\]: key stopped_trials must be one of \('sampler', 'estimate'\)"),
     (["scheduler.noise_z=-1"], r"\[scheduler\]: key noise_z must be in 0\.\.10"),
     (["scheduler.kind='pbt'"], r"\[scheduler\]: key kind must be one of \('asha', 'none'\)"),
     (["train.feature_views=-1"], r"\[train\]: key feature_views must be >= 0"),
     (["model.weights=''"], r"\[model\]: key weights must be")],
)
def test_bad_values_name_file_and_key(overrides, message):
    with pytest.raises(ConfigError, match=rf"demo\.toml.*{message}"):
        load_experiment(DEMO_EXPERIMENT, overrides)


def test_unknown_key_and_table(tmp_path):
    with pytest.raises(ConfigError, match=r"exp\.toml \[scheduler\]: unknown key\(s\) \['patience'\]"):
        load_experiment(_write(tmp_path, "").parent / "exp.toml", ["scheduler.patience=3"])
    with pytest.raises(ConfigError, match=r"exp\.toml: unknown table\(s\) \['optimiser'\]"):
        load_experiment(_write(tmp_path, "[optimiser]\nname = 'adam'\n"))


def test_start_point_outside_space(tmp_path):
    path = _write(tmp_path, "[[search.start]]\nbatch_size = 48\nlearning_rate = 0.01\nlr_decay = 0.0001\nunfreeze_depth = 0\nhead_epochs = 0\n")
    with pytest.raises(ConfigError, match=r"\[\[search\.start\]\] #2 batch_size: 48 is outside its search space"):
        load_experiment(path)


def test_invalid_toml_and_missing_file(tmp_path):
    (tmp_path / "broken.toml").write_text("[data\nformat = 1")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_experiment(tmp_path / "broken.toml")
    with pytest.raises(ConfigError, match=r"nope\.toml: experiment file not found"):
        load_experiment(tmp_path / "nope.toml")


@pytest.mark.parametrize("name", ["stanford_cars", "stanford_cars.toml"])
def test_a_shipped_experiment_is_found_by_its_name_from_any_folder(name, tmp_path, monkeypatch):
    """After a non-editable install the experiments live in tuning.experiments: `--experiment stanford_cars`
    (or `stanford_cars.toml`), from a folder without such a file, reads the shipped one."""
    monkeypatch.chdir(tmp_path)
    assert load_experiment(name).to_dict() == load_experiment(EXPERIMENTS / "stanford_cars.toml").to_dict()


def test_a_file_of_that_name_in_the_folder_wins_over_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stanford_cars.toml").write_text(DEMO_EXPERIMENT.read_text())
    ours, demo = load_experiment("stanford_cars.toml").to_dict(), load_experiment(DEMO_EXPERIMENT).to_dict()
    assert ours.pop("source") == "stanford_cars.toml"
    demo.pop("source")
    assert ours == demo


def _space(table):
    return parse_space(table, RunSettings(), "exp.toml")


def test_each_dimension_gives_its_optuna_distribution():
    space = _space({"unfreeze_depth": {"randint": [0, 16]}, "batch_size": {"choice": [16, 32]},
                    "learning_rate": {"loguniform": [1e-4, 1e-1]}, "momentum": {"uniform": [0.8, 0.95]}})
    distributions = space.optuna_distributions()
    assert list(distributions) == list(space) == ["unfreeze_depth", "batch_size", "learning_rate", "momentum"]
    depth = distributions["unfreeze_depth"]
    assert (depth.low, depth.high) == (0, 16)  # both ends included, as randint says
    assert distributions["batch_size"].choices == (16, 32)
    rate, momentum = distributions["learning_rate"], distributions["momentum"]
    assert rate.log and (rate.low, rate.high) == (1e-4, 1e-1) and not momentum.log


def test_what_a_dimension_can_propose():
    space = _space({"unfreeze_depth": {"randint": [2, 4]}, "batch_size": {"choice": [8]}, "learning_rate": {"uniform": [0.01, 0.1]}})
    depth, batch, rate = space.get("unfreeze_depth"), space.get("batch_size"), space.get("learning_rate")
    assert depth.values() == [2, 3, 4] and depth.contains(4) and not depth.contains(5)
    assert rate.values() == [0.01, 0.1] and rate.contains(0.05) and not rate.contains(0.2)
    assert batch.is_fixed and not depth.is_fixed and not space.is_single_point
    assert _space({"batch_size": {"choice": [8]}}).is_single_point
    assert space.get("dropout") is None


def test_the_space_reads_back_as_the_file_wrote_it():
    """experiment.json stores the TOML table, and --resume parses it again."""
    experiment = load_experiment()
    assert experiment.to_dict()["search"]["space"] == read_toml(DEMO_EXPERIMENT)["search"]["space"]
    assert str(experiment.search.space) == str(read_toml(DEMO_EXPERIMENT)["search"]["space"])  # as the plan prints it


def test_saved_experiment_reads_back(tmp_path):
    from tuning.experiment import experiment_from_document

    experiment = load_experiment(DEMO_EXPERIMENT, ["train.momentum=0.8"])
    again = experiment_from_document(experiment.to_dict(), "saved.json")
    assert again.settings == experiment.settings and again.search == experiment.search and again.name == "demo"


def test_every_path_is_made_absolute_once_against_the_working_folder(tmp_path, monkeypatch):
    """A trial runs in a Ray worker whose working folder is Ray's: the paths it reads are absolute before Ray starts,
    each against the folder the command ran in, and the plan shows them so. A URI stays as it is."""
    from argparse import Namespace

    from tuning.plan import describe_plan

    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.h5").write_bytes(b"")
    experiment = load_experiment(DEMO_EXPERIMENT, ["data.cache_dir='relcache'", "data.root='cars'", "data.format='devkit'",
                                                   "model.weights='weights.h5'", "run.storage_path='runs'"])
    settings = experiment.settings
    assert (settings.data.cache_dir, settings.data.root, settings.model.weights, experiment.run.storage_path) == (
        str(tmp_path / "relcache"), str(tmp_path / "cars"), str(tmp_path / "weights.h5"), str(tmp_path / "runs"))
    plan = describe_plan(experiment, Namespace(resume=None, address=None))
    assert f"cache        {tmp_path / 'relcache'}" in plan and f"data         devkit at {tmp_path / 'cars'}" in plan
    monkeypatch.setenv("XDG_CACHE_HOME", "xdg")  # the default cache, from a relative variable
    assert load_experiment(DEMO_EXPERIMENT).settings.data.cache_dir == str(tmp_path / "xdg" / "carclf")
    assert load_experiment(DEMO_EXPERIMENT, ["run.storage_path='s3://bucket/runs'"]).run.storage_path == "s3://bucket/runs"


def test_the_plan_says_which_trials_asha_never_judges_and_that_a_loss_has_no_noise_margin():
    from tuning.plan import describe_scheduler, never_judged

    demo = load_experiment(DEMO_EXPERIMENT)  # head_epochs 0 or 2 within 4 epochs, rungs at 1 and 2: every trial is judged
    assert never_judged(demo) is None and "standard errors of the cut" in describe_scheduler(demo)
    assert "stopped trial" not in describe_scheduler(demo)
    told = load_experiment(DEMO_EXPERIMENT, ["search.stopped_trials='estimate'"])
    assert describe_scheduler(told).endswith("the sampler is told each stopped trial's estimated final value (search.stopped_trials)")
    short = load_experiment(DEMO_EXPERIMENT, ["scheduler.grace_period=3"])  # 2 warm-up epochs leave 2, short of the rung at 3
    assert never_judged(short) == ("trials with head_epochs 2 fine-tune for fewer than the first rung's 3 epoch(s) within "
                                   "scheduler.max_epochs (4): ASHA never judges them, so they always train every epoch "
                                   "(lower head_epochs, or raise max_epochs)")
    assert "ASHA stops no trial early" in never_judged(load_experiment(DEMO_EXPERIMENT, ["scheduler.grace_period=4"]))
    loss = load_experiment(DEMO_EXPERIMENT, ["search.metric='val_loss'"])
    assert describe_scheduler(loss).endswith("(no noise margin: val_loss has no standard error, so the cut alone decides)")
