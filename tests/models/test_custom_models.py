"""Users' own models and trained teachers (issue 14): `module:callable` and `torchvision:NAME` archs, a teacher
given as a checkpoint in each of four formats, hints on custom networks, students vmap cannot stack, and
every refusal -- one line, exit 2, nothing written."""

import hashlib
import re
import textwrap

import pandas as pd
import pytest
import torch
import yaml
from helpers import experiment, final_metrics, train_experiment, write_experiment
from torch import nn

from kdtemp.config.model_specs import CustomSpec, MLPSpec
from kdtemp.config.schema import DataConfig
from kdtemp.data.registry import load_dataset
from kdtemp.errors import ConfigError
from kdtemp.models.features import feature_module, feature_shape
from kdtemp.models.registry import build_model

MY_MODELS = '''
import torch
from torch import nn

CONSTANT = 3
CALLS = []


def make_list(num_classes):
    return []


class TinyNet(nn.Module):
    """Its head is not named `classifier`: hints must find the last nn.Linear."""

    def __init__(self, width, num_classes, input_shape):
        super().__init__()
        CALLS.append({"width": width, "num_classes": num_classes, "input_shape": input_shape})
        size = 1
        for dim in input_shape:
            size *= dim
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(size, width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


class BranchyNet(TinyNet):
    """TinyNet with data-dependent control flow, which vmap cannot run; both branches compute the same."""

    def forward(self, x):
        if x.sum() > float("-inf"):
            return self.head(self.body(x))
        return self.head(self.body(-x))


class NoLinear(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = nn.Conv1d(1, num_classes, 3)

    def forward(self, x):
        return self.conv(x).mean(-1)


def wrong_classes(**kwargs):
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 7))
'''


@pytest.fixture
def my_models(tmp_path, monkeypatch):
    """my_models.py in a fresh working directory, imported anew by each test."""
    (tmp_path / "my_models.py").write_text(textwrap.dedent(MY_MODELS))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(__import__("sys").modules, "my_models", raising=False)
    yield tmp_path
    __import__("sys").modules.pop("my_models", None)


TEACHER = {"arch": "mlp", "hidden": [32], "epochs": 1}


def write_config(directory, data_root, name="tiny", teacher=None, student=None, **sections):
    """A tiny experiment whose teacher and student sections are exactly these (not merged into the defaults)."""
    path = write_experiment(directory, data_root, name, **sections)
    tree = yaml.safe_load(path.read_text())
    tree["teacher"] = teacher or TEACHER
    tree["student"] = {"epochs": 2, **(student or {})}
    path.write_text(yaml.safe_dump(tree))
    return path


def mlp_teacher(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(MLPSpec(**TEACHER), (1, 40), 10)


def save_teacher(model: nn.Module, path, kind: str) -> None:
    model.eval()
    if kind == "state_dict":
        torch.save(model.state_dict(), path)
    elif kind == "kdtemp":
        torch.save({"format": "kdtemp-teacher/1", "state_dict": model.state_dict(), "test_acc": 0.5}, path)
    elif kind == "torchscript":
        torch.jit.save(torch.jit.script(model), str(path))
    else:
        torch.export.save(torch.export.export(model, (torch.zeros(4, 1, 40),)), str(path))


# --- building ----------------------------------------------------------------------------------


def test_module_callable_gets_its_kwargs_and_the_data_shape(my_models):
    model = build_model(CustomSpec(arch="my_models:TinyNet", kwargs={"width": 16}), (1, 40), 10)
    import my_models as module

    assert module.CALLS == [{"width": 16, "num_classes": 10, "input_shape": (1, 40)}]
    x = torch.randn(5, 1, 40, dtype=torch.float64)
    w1, b1, w2, b2 = (p.detach().double() for p in model.parameters())
    expected = torch.relu(x.flatten(1) @ w1.T + b1) @ w2.T + b2
    torch.testing.assert_close(model.double()(x), expected)
    # hints: the penultimate default is the input of the last nn.Linear (`head`), a (16,) vector
    assert feature_module(model, None, "student") == (model.head, True)
    assert feature_shape(model.float(), None, x[:2].float(), "student") == (16,)


def test_torchvision_resnet18_is_torchvision_s_with_our_class_count():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(3)
    model = build_model(CustomSpec(arch="torchvision:resnet18"), (3, 16, 16), 3)
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(num_classes=3)
    for (name, ours), theirs in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(ours, theirs), name
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        pooled = torch.flatten(model.avgpool(model.layer4(model.layer3(model.layer2(model.layer1(
            model.maxpool(model.relu(model.bn1(model.conv1(x))))))))), 1)
        assert model(x).shape == (2, 3)
    # the hint default for a torchvision net is `fc`'s input, the pooled 512 features
    assert feature_module(model, None, "teacher") == (model.fc, True)
    assert feature_shape(model, None, x, "teacher") == tuple(pooled.shape[1:]) == (512,)


def test_a_net_without_linear_layers_has_no_default_hint(my_models):
    model = build_model(CustomSpec(arch="my_models:NoLinear"), (1, 40), 10)
    with pytest.raises(ConfigError, match=r"the student has no nn.Linear layer .* kd.feature_layers.student"):
        feature_module(model, None, "student")


# --- teacher checkpoints -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["kdtemp", "state_dict", "torchscript", "export"])
def test_a_checkpoint_teacher_is_evaluated_and_recorded(kind, tmp_path, data_root, run_cli):
    source = mlp_teacher(seed=5)
    path = tmp_path / ("teacher.pt2" if kind == "export" else "teacher.pt")
    save_teacher(source, path, kind)
    config = write_config(tmp_path, data_root, teacher={**TEACHER, "checkpoint": str(path)})
    result = run_cli("train-teacher", "--config", config)
    assert result.code == 0, result.stderr
    assert "teacher imported in" in result.stdout and "trained" not in result.stdout
    assert "teacher already imported" in run_cli("train-teacher", "--config", config).stdout

    record = torch.load(experiment(config) / "teacher" / "model.pt", weights_only=True)
    for name, tensor in source.state_dict().items():
        assert torch.equal(record["state_dict"][name], tensor), name
    data = load_dataset(DataConfig(root=data_root))
    with torch.no_grad():
        predictions = source.double()(data.test_x.double()).argmax(-1)
    assert record["test_acc"] == pytest.approx(float((predictions == data.test_y).double().mean()), abs=1e-12)
    assert record["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["source"]["format"] == {"kdtemp": "kdtemp", "state_dict": "state_dict",
                                          "torchscript": "torchscript", "export": "torch.export"}[kind]
    assert record["epochs"] == 0 and not (experiment(config) / "teacher" / "metrics.csv").exists()


def test_a_changed_checkpoint_is_refused_until_reimported(tmp_path, data_root, run_cli):
    path = tmp_path / "teacher.pt"
    save_teacher(mlp_teacher(seed=1), path, "state_dict")
    config = write_config(tmp_path, data_root, teacher={**TEACHER, "checkpoint": str(path)})
    assert run_cli("train-teacher", "--config", config).code == 0
    save_teacher(mlp_teacher(seed=2), path, "state_dict")
    for command in ("train-teacher", "sweep"):
        result = run_cli(command, "--config", config)
        assert result.code == 2 and "not imported from the current teacher.checkpoint" in result.stderr, result.stderr
    assert run_cli("train-teacher", "--config", config, "--force").code == 0


# --- refusals: one line, exit 2, nothing written ---------------------------------------------------


def mismatched_state(path):
    torch.manual_seed(0)
    torch.save(build_model(MLPSpec(hidden=[16]), (1, 40), 10).state_dict(), path)


def missing_bias(path):
    state = mlp_teacher().state_dict()
    del state["classifier.bias"]
    torch.save(state, path)


def other_program(path):
    """A TorchScript program whose weights fit the mlp but whose forward is another network's."""
    class Doubled(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.features, self.classifier = inner.features, inner.classifier

        def forward(self, x):
            return 2 * self.classifier(self.features(x))

    torch.jit.save(torch.jit.script(Doubled(mlp_teacher()).eval()), str(path))


@pytest.mark.parametrize("student, teacher_file, message", [
    ("nosuchmod:Net", None, r"nosuchmod:Net: cannot import 'nosuchmod' \(ModuleNotFoundError: No module named 'nosuchmod'\)"),
    ("my_models:Missing", None, r"module 'my_models' has no attribute 'Missing'"),
    ("my_models:CONSTANT", None, r"'CONSTANT' is a int, not a class or function"),
    ("my_models:make_list", None, r"my_models:make_list returned a list, not a torch.nn.Module"),
    ("my_models:wrong_classes", None, r"gives \(1, 7\) for one example, but the data has 10 classes"),
    ("mlp", mismatched_state, r"does not fit a mlp with 10 classes: shape features.1.weight \(16, 40\) vs \(32, 40\)"),
    ("mlp", missing_bias, r"does not fit a mlp with 10 classes: missing classifier.bias;"),
    ("mlp", other_program, r"program computes other logits than mlp with its weights"),
])
def test_bad_models_and_checkpoints_are_refused_before_anything_is_written(
        student, teacher_file, message, my_models, data_root, run_cli):
    teacher = dict(TEACHER)
    if teacher_file is not None:
        teacher_file(my_models / "teacher.pt")
        teacher["checkpoint"] = str(my_models / "teacher.pt")
    config = write_config(my_models, data_root, teacher=teacher, student={"arch": student})
    result = run_cli("train-teacher", "--config", config)
    assert result.code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), result.stderr
    assert not (my_models / "runs").exists()


# --- end to end ------------------------------------------------------------------------------------


def test_checkpoint_teacher_and_unstackable_custom_student_end_to_end(my_models, data_root, run_cli):
    """train-teacher -> sweep -> report with a state-dict teacher and a student vmap cannot run; its runs train
    one member at a time and give the numbers the same network without the branch gives stacked."""
    save_teacher(mlp_teacher(seed=7), my_models / "teacher.pt", "state_dict")
    teacher = {**TEACHER, "checkpoint": str(my_models / "teacher.pt")}
    student = {"kwargs": {"width": 16}, "epochs": 1}
    kd = {"temperatures": [4], "seeds": [0, 1], "feature_weight": 0.5}
    config = write_config(my_models, data_root, "branchy", teacher=teacher, kd=kd,
                              student={"arch": "my_models:BranchyNet", **student})
    assert run_cli("train-teacher", "--config", config).code == 0
    swept = run_cli("sweep", "--config", config)
    assert swept.code == 0, swept.stderr
    assert swept.stderr.count("cannot be stacked with vmap") == 1, swept.stderr
    report = run_cli("report", "--config", config)
    assert report.code == 0, report.stderr

    twin = write_config(my_models, data_root, "twin", teacher=teacher, kd=kd,
                            student={"arch": "my_models:TinyNet", **student})
    train_experiment(twin)
    keys = ["schedule", "t0", "seed", "epoch"]
    ours = final_metrics(experiment(config)).drop(columns="run_id").sort_values(keys).reset_index(drop=True)
    stacked = final_metrics(experiment(twin)).drop(columns="run_id").sort_values(keys).reset_index(drop=True)
    assert len(ours) == (1 + 1) * 2  # (1 temperature + baseline) x 2 seeds x 1 epoch
    assert "train_feature" in ours.columns and ours["train_feature"].notna().any()
    pd.testing.assert_frame_equal(ours, stacked, check_exact=False, rtol=1e-5, atol=1e-6)
    for _, runs in ours.groupby(["schedule", "t0"], dropna=False):
        mean, std = runs["test_acc"].mean(), runs["test_acc"].std()
        assert f"{100 * mean:.1f} ± {100 * std:.1f} (2)" in report.stdout, report.stdout


def test_torchvision_checkpoint_teacher_into_a_custom_student_on_an_image_folder(my_models, run_cli):
    """The combination the issue asks for: a torchvision:resnet18 teacher given as a plain state dict, a
    module:callable student and an image folder, through train-teacher -> sweep -> report."""
    import torchvision
    from helpers import write_image_folder

    folder = write_image_folder(my_models / "images", seed=0)
    torch.manual_seed(3)
    teacher = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(teacher.state_dict(), my_models / "resnet18.pt")
    data = {"dataset": "image-folder", "root": str(folder), "image_size": 8, "batch_size": 8}
    config = write_config(my_models, my_models / "data", "own", data=data,
                          teacher={"arch": "torchvision:resnet18", "checkpoint": str(my_models / "resnet18.pt")},
                          student={"arch": "my_models:TinyNet", "kwargs": {"width": 16}, "epochs": 1},
                          kd={"temperatures": [4], "seeds": [0, 1]})
    for command in ("train-teacher", "sweep", "report"):
        result = run_cli(command, "--config", config)
        assert result.code == 0, f"{command}: {result.stderr}"
    record = torch.load(experiment(config) / "teacher" / "model.pt", weights_only=True)
    images = load_dataset(DataConfig(**data))
    with torch.no_grad():
        predictions = teacher.double()(images.test_x.double()).argmax(-1)
    assert record["source"]["format"] == "state_dict"
    assert record["test_acc"] == pytest.approx(float((predictions == images.test_y).double().mean()), abs=1e-12)
    summary = pd.read_csv(experiment(config) / "report" / "summary.csv")
    assert set(summary["schedule"]) == {"constant", "none", "teacher"}
    assert summary.loc[summary["schedule"] == "constant", "n"].item() == 2


def test_torchvision_weights_that_cannot_be_downloaded_are_one_line(monkeypatch):
    """Offline, torchvision's download raises URLError (an OSError): a ConfigError naming the way out, no traceback."""
    import urllib.error

    import torchvision

    from kdtemp.models.custom import torchvision_model

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(ConfigError, match=r"torchvision:resnet18 weights IMAGENET1K_V1: .*name resolution.*weights: null"):
        torchvision_model("resnet18", "IMAGENET1K_V1", 10, {})
