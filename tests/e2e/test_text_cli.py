"""Text end to end through the CLI: a sweep of a transformer into an embedding bag on the synthetic review
task, a saved BERT teacher taken as trained, and the refusals of bad text input."""

import re

import pandas as pd
import pytest
import torch
import yaml

from kdtemp.data.synthetic_text import write_reviews

pytestmark = pytest.mark.slow


@pytest.fixture
def wide_output(monkeypatch):
    from rich.console import Console

    from kdtemp.cli import progress

    monkeypatch.setattr(progress, "out", Console(width=200))
    monkeypatch.setattr(progress, "err", Console(stderr=True, width=200))


def text_config(tmp_path, name="text", **sections):
    root = tmp_path / "reviews"
    if not root.exists():
        write_reviews(root, train=300, test=80)
    tree = {
        "name": name,
        "runs_dir": str(tmp_path / "runs"),
        "data": {"dataset": "text", "root": str(root), "batch_size": 64, "vocab_size": 400},
        "teacher": {"arch": "transformer", "layers": 1, "d_model": 16, "heads": 2, "feed_forward": 32, "epochs": 2,
                    "optimizer": "adamw", "lr": 0.003},
        "student": {"arch": "embedding-bag", "embedding_dim": 8, "ngrams": 2, "buckets": 100, "epochs": 2,
                    "optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0},
        "kd": {"temperatures": [1, 4], "seeds": [0, 1]},
    }
    for key, value in sections.items():
        tree[key] = {**tree.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def test_a_text_sweep_runs_reports_and_exports_like_an_image_sweep(tmp_path, run_cli, wide_output):
    config = text_config(tmp_path)
    for command in ("train-teacher", "sweep", "report"):
        result = run_cli(command, "--config", config)
        assert result.code == 0, result.stderr
    experiment = tmp_path / "runs" / "text"
    report = run_cli("report", "--config", config).stdout
    assert re.search(r"constant\s+│.*T=1|T=1.*T=4", report, re.S) and "baseline (no KD)" in report
    summary = pd.read_csv(experiment / "report" / "summary.csv")
    assert set(summary["t0"].dropna()) >= {1.0, 4.0}
    # the experiment keeps the tokenizer its ids came from: it encodes a text as the data holds it
    from tokenizers import Tokenizer

    from kdtemp.config.loading import load_config
    from kdtemp.data.registry import load_dataset

    data = load_dataset(load_config(config).data)
    encoded = Tokenizer.from_file(str(experiment / "tokenizer.json")).encode(pd.read_csv(tmp_path / "reviews" / "test.csv")["text"][0])
    assert torch.equal(data.test_x[0], torch.tensor([encoded.ids, encoded.attention_mask]))
    teacher = torch.load(experiment / "teacher" / "model.pt", weights_only=True)
    assert teacher["vocab_size"] > 5 and teacher["input_shape"][0] == 2
    exported = run_cli("export", "--config", config)
    assert exported.code == 0, exported.stderr
    program = torch.export.load(next(experiment.glob("students/*/student.pt2"))).module()
    # a new text longer than any training text: the saved tokenizer cuts it to the length the export takes
    saved = Tokenizer.from_file(str(experiment / "tokenizer.json"))
    long = saved.encode(" ".join(pd.read_csv(tmp_path / "reviews" / "test.csv")["text"][:5]))
    assert len(long.ids) == teacher["input_shape"][1] and all(long.attention_mask)
    assert program(torch.tensor([[long.ids, long.attention_mask]])).shape == (1, 4)


def test_a_saved_bert_teacher_is_evaluated_and_recorded_and_distilled(tmp_path, run_cli, wide_output):
    transformers = pytest.importorskip("transformers")
    config = text_config(tmp_path, "bert", kd={"temperatures": [2], "seeds": [0]})
    # the BERT must read the data's ids: the data tokenised with a tokenizer of the model's vocabulary
    assert run_cli("train-teacher", "--config", config, "--epochs", "1").code == 0
    tokenizer = tmp_path / "runs" / "bert" / "tokenizer.json"
    vocab = len(yaml.safe_load(tokenizer.read_text())["model"]["vocab"])
    bert = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=32, max_position_embeddings=64, num_labels=4)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(bert).save_pretrained(tmp_path / "bert-model")
    hf = text_config(tmp_path, "hf", data={"tokenizer": str(tokenizer)},
                     teacher={"arch": f"hf:{tmp_path / 'bert-model'}"},
                     student={"arch": "hf-config", "kwargs": {"model_type": "bert", "hidden_size": 16,
                              "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
                              "epochs": 1},
                     kd={"temperatures": [2], "seeds": [0]})
    tree = yaml.safe_load(hf.read_text())
    for key in ("layers", "d_model", "heads", "feed_forward"):
        tree["teacher"].pop(key)
    for key in ("embedding_dim", "ngrams", "buckets"):
        tree["student"].pop(key)
    hf.write_text(yaml.safe_dump(tree))
    result = run_cli("train-teacher", "--config", hf)
    assert result.code == 0, result.stderr
    record = torch.load(tmp_path / "runs" / "hf" / "teacher" / "model.pt", weights_only=True)
    assert record["epochs"] == 0 and record["source"]["format"] == "transformers"
    assert not (tmp_path / "runs" / "hf" / "teacher" / "metrics.csv").exists()
    swept = run_cli("sweep", "--config", hf)
    assert swept.code == 0, swept.stderr
    assert "hf-config cannot be stacked with vmap" in " ".join((swept.stdout + swept.stderr).split())
    assert len(list((tmp_path / "runs" / "hf" / "students").glob("*/summary.json"))) == 2
    # a transformers student's model.pt loads into a freshly built one: export works
    exported = run_cli("export", "--config", hf, "--format", "torchscript")
    assert exported.code == 0, exported.stderr
    # fine_tune: the saved BERT is trained like any teacher instead
    tuned = run_cli("train-teacher", "--config", hf, "--set", "teacher.fine_tune=true", "--force")
    assert tuned.code == 0, tuned.stderr
    record = torch.load(tmp_path / "runs" / "hf" / "teacher" / "model.pt", weights_only=True)
    assert record["epochs"] == 2 and "source" not in record
    assert len(pd.read_csv(tmp_path / "runs" / "hf" / "teacher" / "metrics.csv")) == 2
    assert "Loading weights" not in tuned.stdout + tuned.stderr  # transformers' progress bars stay quiet


@pytest.mark.parametrize("student, override, message", [
    (None, "data.max_length=1", r"data.max_length.*greater than or equal to 2"),
    (None, "data.augment=true", r"data.augment crops and flips images; text holds texts: set augment: false"),
    ({"arch": "mlp"}, "kd.alpha=0.9", r"mlp takes float inputs, but the data is text \(token ids\); choose embedding-bag"),
], ids=["max_length", "augment", "mlp"])
def test_bad_text_settings_are_refused_in_one_line_and_nothing_is_written(tmp_path, run_cli, wide_output, student,
                                                                          override, message):
    config = text_config(tmp_path)
    if student is not None:
        tree = yaml.safe_load(config.read_text())
        config.write_text(yaml.safe_dump({**tree, "student": student}))
    result = run_cli("train-teacher", "--config", config, "--set", override)
    assert result.code != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.search(message, errors[0]), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_logit_std_ctkd_and_hints_distil_text_students(tmp_path, run_cli, wide_output):
    """The methods that act on logits, and a hint on the pooled features (transformer -> embedding bag)."""
    config = text_config(tmp_path, "methods", kd={"temperatures": [2], "seeds": [0], "feature_weight": 0.5,
                                                   "schedules": [{"name": "learnable", "curriculum_epochs": 1},
                                                                 "logit-std"]})
    for command in ("train-teacher", "sweep"):
        result = run_cli(command, "--config", config)
        assert result.code == 0, result.stderr
    runs = pd.concat(pd.read_csv(path) for path in (tmp_path / "runs" / "methods").glob("students/*/metrics.csv"))
    last = runs[runs["epoch"] == 1].set_index("schedule")
    assert set(last.index) == {"learnable", "logit-std", "none"}
    assert last.loc["logit-std", "effective_temperature"] > 0 and last.loc["learnable", "temperature"] != 2.0
    assert last.loc["learnable", "train_feature"] > 0  # the hint term, trained
