"""Config loading: defaults, shipped files, overrides, and one actionable line per mistake."""

from pathlib import Path

import pytest

from kdtemp.config.loading import load_config
from kdtemp.config.model_specs import CNNSpec, MLPSpec
from kdtemp.config.overrides import parse_number_list
from kdtemp.config.schema import ExperimentConfig
from kdtemp.errors import ConfigError
from kdtemp.temperature.schedules import ConstantSchedule, LinearSchedule

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_notebook_may_name_the_config_file_as_a_string(tmp_path):
    path = write(tmp_path, "kd: {temperatures: [2, 8]}\nstudent: {epochs: 3}\n", name="from-a-notebook.yaml")
    as_string, as_path = load_config(str(path)), load_config(path)
    assert as_string == as_path
    assert as_string.name == "from-a-notebook" and as_string.kd.temperatures == [2, 8] and as_string.student.epochs == 3
    with pytest.raises(ConfigError, match=r"config file not found: .*absent\.yaml; pass an existing YAML file"):
        load_config(str(tmp_path / "absent.yaml"))


def test_defaults_describe_the_mnist1d_experiment():
    config = load_config()
    assert config.name == "default"
    assert config.data.dataset == "mnist1d"
    assert isinstance(config.teacher, CNNSpec) and isinstance(config.student, MLPSpec)
    assert config.kd.alpha == 0.9
    assert config.kd.schedules == [ConstantSchedule()]


def test_shipped_default_yaml_is_exactly_the_defaults():
    assert load_config(CONFIGS / "default.yaml") == ExperimentConfig()


@pytest.mark.parametrize("name", ["default", "fashion-mnist", "cifar10", "cifar100"])
def test_every_shipped_config_validates(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.name == name


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_configs_follow_repdistillers_sgd(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    for spec in (config.teacher, config.student):
        assert (spec.optimizer, spec.lr, spec.momentum, spec.weight_decay, spec.nesterov) == ("sgd", 0.05, 0.9, 5e-4, False)


def test_default_nesterov_keeps_existing_run_ids():
    """Ids computed when run format 2 (the validation split) began, from a config that does not name
    `nesterov`: a run finished then is still recognised. Setting the key to its non-default value makes
    different runs. (Format 1's ids, from before the split, are not: those runs trained on the validation
    samples.)"""
    import hashlib
    import json

    from kdtemp.config.model_specs import training_identity
    from kdtemp.sweep.plan import plan_runs

    ids = [run.run_id for run in plan_runs(load_config(CONFIGS / "default.yaml"), "teacherfp")]
    assert ids[:3] == ["constant-T1-a0.9-s0-4648f4ba", "constant-T1-a0.9-s1-e0150986", "constant-T1-a0.9-s2-55374bbc"]
    teacher = hashlib.sha256(json.dumps(training_identity(CNNSpec()), sort_keys=True).encode()).hexdigest()[:8]
    assert teacher == "cc1321d7"  # the teacher checkpoint's training identity, so an interrupted teacher resumes
    plain = load_config(None, {"student.nesterov": (False, "--nesterov")})
    assert plan_runs(plain, "teacherfp")[0].run_id != ids[0]


def test_fashion_config_matches_the_specified_networks():
    from kdtemp.models.footprint import count_parameters
    from kdtemp.models.registry import build_model

    config = load_config(CONFIGS / "fashion-mnist.yaml")
    teacher = build_model(config.teacher, (1, 28, 28), 10)
    student = build_model(config.student, (1, 28, 28), 10)
    assert count_parameters(teacher) == 824_650  # ~0.8M as specified
    assert count_parameters(student) == 784 * 64 + 64 + 64 * 10 + 10


def test_a_file_states_only_what_it_changes(tmp_path):
    config = load_config(write(tmp_path, "kd:\n  alpha: 0.5\nstudent:\n  epochs: 7\n"))
    assert config.kd.alpha == 0.5
    assert config.student.epochs == 7
    assert config.student.hidden == MLPSpec().hidden  # untouched keys keep defaults
    assert config.kd.temperatures == ExperimentConfig().kd.temperatures
    assert config.name == "exp"  # from the file's stem


def test_changing_arch_takes_that_arch_defaults(tmp_path):
    config = load_config(write(tmp_path, "student:\n  arch: cnn\n  channels: [4]\n"))
    assert isinstance(config.student, CNNSpec) and config.student.channels == [4]


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, "kd:\n  alhpa: 0.5\n")
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    message = str(excinfo.value)
    assert str(path) in message and "kd.alhpa" in message and "did you mean 'alpha'" in message
    assert "\n" not in message


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trainer'"):
        load_config(write(tmp_path, "trainer: {}\n"))


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"exp.yaml: student.epochs: .*integer.*'ten'"):
        load_config(write(tmp_path, "student:\n  epochs: ten\n"))


def test_alpha_out_of_range(tmp_path):
    with pytest.raises(ConfigError, match=r"kd.alpha: input should be less than or equal to 1 \(got 1.5\)"):
        load_config(write(tmp_path, "kd:\n  alpha: 1.5\n"))


def test_unparsable_yaml_gives_line(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot parse YAML at line 3, column 3: expected <block end>, but found '-'"):
        load_config(write(tmp_path, "kd:\n  alpha: 0.5\n  - x\n"))


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match=r"top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_yaml_cannot_construct_python_objects(tmp_path):
    """safe_load only: a python/object tag is a parse error, never an object."""
    path = write(tmp_path, "kd: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError, match="cannot parse YAML"):
        load_config(path)
    assert not (Path.cwd() / "pwned").exists()


def test_overrides_name_the_option():
    with pytest.raises(ConfigError, match=r"^--alpha: "):
        load_config(None, {"kd.alpha": ("2", "--alpha")})
    with pytest.raises(ConfigError, match=r"^--temps: input should be greater than 0"):
        load_config(None, {"kd.temperatures": ([1.0, -1.0], "--temps")})
    config = load_config(None, {"kd.temperatures": ([3.0, 1.0, 3.0], "--temps"), "student.epochs": ("4", "--epochs")})
    assert config.kd.temperatures == [3.0, 1.0]  # duplicates dropped, order kept
    assert config.student.epochs == 4


def test_teacher_override_sets_every_member_of_an_ensemble(tmp_path):
    path = write(tmp_path, "teachers:\n  - {epochs: 5}\n  - {arch: mlp, epochs: 6, seed: 9}\n")
    config = load_config(path, {"teacher.epochs": ("2", "--epochs")})
    assert [spec.epochs for spec in config.teacher_specs()] == [2, 2]
    assert [spec.seed for spec in config.teacher_specs()] == [0, 9]  # nothing else of a member changes
    with pytest.raises(ConfigError, match=r"^--epochs: input should be greater than 0"):
        load_config(path, {"teacher.epochs": ("0", "--epochs")})
    assert load_config(None, {"teacher.epochs": ("3", "--epochs")}).teacher.epochs == 3  # one teacher: as before


def test_unknown_dataset_lists_the_choices():
    with pytest.raises(ConfigError, match=r"--dataset: .*'mnist1d'.*'cifar100'.*'image-folder'.*'tensors' or 'text' \(got 'imagenet'\)"):
        load_config(None, {"data.dataset": ("imagenet", "--dataset")})


def test_unknown_schedule_and_arch(tmp_path):
    with pytest.raises(ConfigError, match=r"kd.schedules\[0\]: unknown name 'warmup'; choose one of"):
        load_config(write(tmp_path, "kd:\n  schedules: [warmup]\n"))
    with pytest.raises(ConfigError, match=r"teacher: unknown arch 'vgg'"):
        load_config(write(tmp_path, "teacher:\n  arch: vgg\n"))


def test_schedule_entries_bare_or_with_params(tmp_path):
    config = load_config(write(tmp_path, "kd:\n  schedules: [constant, {name: linear, t_end: 2}]\n"))
    assert config.kd.schedules == [ConstantSchedule(), LinearSchedule(t_end=2.0)]


def test_unknown_schedule_parameter(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'kd.schedules\[0\].t_ned'; did you mean 't_end'"):
        load_config(write(tmp_path, "kd:\n  schedules: [{name: linear, t_ned: 2}]\n"))


def test_student_seed_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"students take their seeds from kd.seeds"):
        load_config(write(tmp_path, "student:\n  seed: 3\n"))


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ""])
def test_experiment_names_must_be_safe(tmp_path, name):
    with pytest.raises(ConfigError, match="not a safe directory name"):
        load_config(write(tmp_path, f"name: '{name}'\n"))


@pytest.mark.parametrize("text, message", [
    ("1,x,3", "'x' is not a number"),
    ("", "empty list"),
    ("1,,3", "empty list"),
])
def test_number_lists(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_number_list(text, "--temps")
    assert parse_number_list("1, 3,5", "--temps") == [1.0, 3.0, 5.0]


def test_set_and_its_flag_are_one_override(tmp_path):
    """issue 15: a flag is a shorthand for --set: same key, same value, same validation."""
    from kdtemp.config.overrides import command_line_overrides

    path = write(tmp_path, "kd:\n  schedules: [constant, {name: linear, t_end: 2}]\n")
    by_flag = load_config(path, command_line_overrides({"temps": "3,1", "seeds": "4", "schedules": "linear"}))
    by_set = load_config(path, command_line_overrides({}, ["kd.temperatures=[3, 1]", "kd.seeds=[4]",
                                                           "kd.schedules=[linear]"]))
    assert by_flag == by_set
    assert by_set.kd.temperatures == [3.0, 1.0] and by_set.kd.seeds == [4]
    assert by_set.kd.schedules == [LinearSchedule(t_end=2.0)]  # a bare name takes the file's parameters
    assert load_config(path, command_line_overrides({}, ["kd.schedules=[cosine]"])).kd.schedules[0].name == "cosine"


def test_set_reaches_every_teacher_of_an_ensemble(tmp_path):
    from kdtemp.config.overrides import command_line_overrides

    path = write(tmp_path, "teachers:\n  - {epochs: 5}\n  - {arch: mlp, epochs: 6, seed: 9}\n")
    config = load_config(path, command_line_overrides({}, ["teacher.epochs=3"]))
    assert [spec.epochs for spec in config.teacher_specs()] == [3, 3]
    assert [spec.seed for spec in config.teacher_specs()] == [0, 9]
    with pytest.raises(ConfigError, match=r"^--set teacher.epochs=0: input should be greater than 0"):
        load_config(path, command_line_overrides({}, ["teacher.epochs=0"]))


@pytest.mark.parametrize("text", ["kd:\n  alpha: 0.5\n", ""])
def test_a_key_below_a_value_is_refused_whether_the_file_or_the_defaults_hold_it(tmp_path, text):
    from kdtemp.config.overrides import command_line_overrides

    with pytest.raises(ConfigError, match=r"^--set kd.alpha.x=1: 'kd.alpha' holds a value, not a section"):
        load_config(write(tmp_path, text), command_line_overrides({}, ["kd.alpha.x=1"]))
    # a section the defaults leave empty (null) takes keys
    config = load_config(None, command_line_overrides({}, ["kd.feature_layers.student=fc", "kd.feature_layers.teacher=fc"]))
    assert (config.kd.feature_layers.student, config.kd.feature_layers.teacher) == ("fc", "fc")


def test_a_key_of_another_arch_is_named_so_not_suggested_back(tmp_path):
    """in_channels is a torchvision spec's key: on an mlp it is not a typo to correct into itself."""
    with pytest.raises(ConfigError, match=r"unknown key 'student.in_channels'; 'in_channels' belongs to another arch"):
        load_config(None, {"student.in_channels": ("1", "--set student.in_channels=1")})
    with pytest.raises(ConfigError, match=r"unknown key 'teacher.embeding_dim'; did you mean 'embedding_dim'"):
        load_config(write(tmp_path, "teacher: {arch: embedding-bag, embeding_dim: 8}\n"))
