"""Text models: padding never reaches a prediction, stacked text students equal themselves alone (CPU),
transformers models load from local folders only and are checked against the data, and a torchvision
model meets images of the channels it does not expect with the fixes named."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from kdtemp.config.model_specs import CustomSpec, EmbeddingBagSpec, HFConfigSpec, HFSpec, MLPSpec, TransformerSpec
from kdtemp.config.schema import DataConfig
from kdtemp.data.dataset import Dataset
from kdtemp.data.registry import load_dataset
from kdtemp.engine.loop import EpochDone, LoopSettings, Member, TeacherSignal, steps_per_epoch
from kdtemp.engine.stacking import probe_vmap
from kdtemp.errors import ConfigError, DataError
from kdtemp.group.student_group import StudentGroup
from kdtemp.models.custom import with_first_convolution_for
from kdtemp.models.registry import build_model
from kdtemp.temperature.base import temperature_table
from kdtemp.temperature.schedules import ConstantSchedule

VOCAB, LENGTH, CLASSES = 60, 12, 3
TEXT_SPECS = [
    EmbeddingBagSpec(embedding_dim=8, epochs=1),
    EmbeddingBagSpec(embedding_dim=8, hidden=6, ngrams=2, buckets=50, epochs=1),
    TransformerSpec(layers=2, d_model=16, heads=2, feed_forward=24, dropout=0.0, epochs=1),
    TransformerSpec(layers=1, d_model=16, heads=4, feed_forward=24, dropout=0.0, pooling="cls", epochs=1),
]
SPEC_IDS = ["bag", "bag-bigrams-hidden", "transformer-mean", "transformer-cls"]


def token_batch(count, seed=0, lengths=None):
    """Random texts (count, 2, LENGTH): ids from 5, [CLS] = 2 first, then padding (id 0, mask 0)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (count, LENGTH), generator=generator)
    ids[:, 0] = 2
    lengths = torch.randint(2, LENGTH + 1, (count,), generator=generator) if lengths is None else lengths
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    return torch.stack([ids * mask, mask], 1)


@pytest.mark.parametrize("spec", TEXT_SPECS, ids=SPEC_IDS)
def test_padding_does_not_change_a_prediction(spec):
    """Garbage ids under mask 0 give the logits of the padded text, in training and eval mode."""
    torch.manual_seed(0)
    model = build_model(spec, (2, LENGTH), CLASSES, VOCAB)
    texts = token_batch(8)
    garbage = texts.clone()
    noise = torch.randint(0, VOCAB, garbage[:, 0].shape, generator=torch.Generator().manual_seed(1))
    garbage[:, 0] = torch.where(garbage[:, 1] == 1, garbage[:, 0], noise)
    assert not torch.equal(garbage, texts)
    for mode in (True, False):
        model.train(mode)
        torch.testing.assert_close(model(garbage), model(texts), rtol=0, atol=1e-6)
    # and a token that is not masked does change it
    changed = texts.clone()
    changed[:, 0, 1] = (changed[:, 0, 1] + 1) % VOCAB
    assert not torch.allclose(model(changed), model(texts))


def test_the_embedding_bag_is_the_mean_of_its_embeddings():
    """fastText's sentence vector, by hand: the mean over the real tokens of their rows, then the classifier."""
    torch.manual_seed(0)
    model = build_model(EmbeddingBagSpec(embedding_dim=5), (2, LENGTH), CLASSES, VOCAB).double()
    texts = token_batch(4)
    expected = []
    for ids, mask in texts:
        rows = model.embedding.weight[ids[mask == 1]]
        expected.append(model.classifier(rows.mean(0)))
    torch.testing.assert_close(model(texts), torch.stack(expected))


def text_setting(train=64, test=32):
    generator = torch.Generator().manual_seed(0)

    def split(count, seed):
        labels = torch.randint(0, CLASSES, (count,), generator=generator)
        logits = torch.randn(count, CLASSES, generator=generator) * 2
        logits[torch.arange(count), labels] += 4
        return token_batch(count, seed), labels, logits

    (train_x, train_y, teacher_train), (test_x, test_y, teacher_test) = split(train, 1), split(test, 2)
    data = Dataset("random text", train_x, train_y, test_x, test_y, ("a", "b", "c"), "generated here",
                   vocab_size=VOCAB)
    return data, TeacherSignal(test_logits=teacher_test[None], train_logits=teacher_train[None])


@pytest.mark.parametrize("spec", [TEXT_SPECS[1], TEXT_SPECS[2]], ids=["bag-bigrams-hidden", "transformer-mean"])
def test_stacked_text_students_equal_themselves_alone(spec):
    """Bitwise on CPU: every weight and metric of each member of a group of three (T = 1, T = 4, no-KD),
    after 4 steps of Adam, against the member trained alone."""
    spec = spec.model_copy(update={"optimizer": "adam", "lr": 0.01, "epochs": 2})
    data, signal = text_setting()
    table = temperature_table(ConstantSchedule(), 1.0, spec.epochs, steps_per_epoch(len(data.train_y), 32))
    members = [Member(0, 0.9, table, t0=1.0), Member(0, 0.9, table * 4, t0=4.0),
               Member(0, 0.0, torch.ones_like(table), distills=False)]

    def train(group_members):
        settings = LoopSettings(spec, 32, 1000, 0, torch.device("cpu"))
        group = StudentGroup(lambda: build_model(spec, data.input_shape, CLASSES, VOCAB), group_members, data,
                             signal, settings)
        with group:
            return group, [event for event in group.run() if isinstance(event, EpochDone)]

    group, grouped = train(members)
    assert not group.member_by_member  # vmapped, not the conv fallback
    for k, member in enumerate(members):
        alone, solo = train([member])
        for name, tensor in alone.member_state(0)["model"].items():
            assert torch.equal(group.member_state(k)["model"][name], tensor), name
        for row, single in zip(grouped, solo, strict=True):
            for column in ("train_loss", "train_acc", "test_acc", "test_loss"):
                assert row.metrics[k][column] == single.metrics[0][column], column


def test_text_and_float_archs_refuse_the_other_kind_of_data():
    with pytest.raises(ConfigError, match=r"transformer reads token ids, but the data holds \(1, 40\) float inputs"):
        build_model(TransformerSpec(), (1, 40), 10)
    with pytest.raises(ConfigError, match="mlp takes float inputs, but the data is text .*; choose embedding-bag"):
        build_model(MLPSpec(), (2, 12), 3, VOCAB)


# --- transformers ----------------------------------------------------------------------------------

transformers = pytest.importorskip("transformers")


def tiny_bert(folder, labels=CLASSES, vocab=VOCAB):
    """A random 2-layer BERT classifier saved with save_pretrained: no network, a few hundred KB."""
    config = transformers.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=labels)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(folder)
    return model.eval()


def test_a_saved_bert_loads_through_hf_and_computes_its_own_logits(tmp_path):
    saved = tiny_bert(tmp_path / "bert")
    model = build_model(HFSpec(arch=f"hf:{tmp_path / 'bert'}"), (2, LENGTH), CLASSES, VOCAB).eval()
    texts = token_batch(5)
    with torch.no_grad():
        expected = saved(input_ids=texts[:, 0], attention_mask=texts[:, 1]).logits
        torch.testing.assert_close(model(texts), expected)
        garbage = texts.clone()
        garbage[:, 0] = torch.where(texts[:, 1] == 1, texts[:, 0], 7)
        torch.testing.assert_close(model(garbage), expected, rtol=0, atol=1e-5)
    # the head is the last linear layer: the one whose input a hint matches
    assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1] is model.model.classifier


def test_transformers_models_are_checked_against_the_data(tmp_path):
    tiny_bert(tmp_path / "bert")
    spec = HFSpec(arch=f"hf:{tmp_path / 'bert'}")
    with pytest.raises(ConfigError, match=r"predicts 3 labels, the data has 4 classes"):
        build_model(spec, (2, LENGTH), 4, VOCAB)
    with pytest.raises(ConfigError, match=r"vocabulary of 60 ids, the data's tokenizer 100"):
        build_model(spec, (2, LENGTH), CLASSES, 100)
    with pytest.raises(ConfigError, match=r"at most 32 positions, the texts are padded to 40; set data.max_length to 32"):
        build_model(spec, (2, 40), CLASSES, VOCAB)
    with pytest.raises(ConfigError, match=r"holds no config.json; give a folder written by save_pretrained"):
        build_model(HFSpec(arch=f"hf:{tmp_path}"), (2, LENGTH), CLASSES, VOCAB)


def test_hf_config_builds_a_random_student_offline_with_the_datas_sizes():
    spec = HFConfigSpec(kwargs={"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "intermediate_size": 32})
    model = build_model(spec, (2, LENGTH), CLASSES, VOCAB)
    config = model.model.config
    assert (config.vocab_size, config.num_labels, config.max_position_embeddings) == (VOCAB, CLASSES, 16)
    assert model(token_batch(3)).shape == (3, CLASSES)
    with pytest.raises(ConfigError, match="hf-config nosuchmodel: .*; fix its kwargs"):
        build_model(HFConfigSpec(kwargs={"model_type": "nosuchmodel"}), (2, LENGTH), CLASSES, VOCAB)


# --- channels --------------------------------------------------------------------------------------


def gray_images(tmp_path):
    generator = np.random.default_rng(0)
    path = tmp_path / "digits.npz"
    np.savez(path, x_train=generator.integers(0, 256, (40, 1, 16, 16), dtype=np.uint8),
             y_train=np.arange(40) % 4, x_test=generator.integers(0, 256, (8, 1, 16, 16), dtype=np.uint8),
             y_test=np.arange(8) % 4)
    return path


def test_a_torchvision_model_on_gray_images_names_both_fixes_and_each_works(tmp_path):
    path = gray_images(tmp_path)
    gray = load_dataset(DataConfig(dataset="tensors", root=path))
    resnet = CustomSpec(arch="torchvision:resnet18")
    with pytest.raises(ConfigError, match=r"torchvision:resnet18 expects 3-channel images, the data has 1 channel\(s\); "
                                          r"set data.channels: 3 .* or in_channels: 1 in its spec"):
        build_model(resnet, gray.input_shape, 4)
    rgb = load_dataset(DataConfig(dataset="tensors", root=path, channels=3))
    assert rgb.input_shape == (3, 16, 16) and torch.equal(rgb.train_x[:, 2], gray.train_x[:, 0])
    assert rgb.pad_value == gray.pad_value * 3
    assert build_model(resnet, rgb.input_shape, 4)(rgb.test_x).shape == (8, 4)
    one = build_model(CustomSpec(arch="torchvision:resnet18", in_channels=1), gray.input_shape, 4)
    assert one.conv1.in_channels == 1 and one(gray.test_x).shape == (8, 4)


def test_a_rebuilt_first_convolution_sees_one_channel_as_the_old_one_sees_it_repeated():
    """Closed form: the new weight is the old summed over RGB, so conv_new(x) = conv_old([x, x, x]) / 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    old = nn.Conv2d(3, 4, 3, padding=1)
    old.load_state_dict(model[0].state_dict())
    with_first_convolution_for(model, 1, "test")
    gray = torch.randn(2, 1, 6, 6)
    torch.testing.assert_close(model[0](gray), old(gray.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-5)


def test_data_channels_refuses_data_that_is_not_gray_images(tmp_path):
    with pytest.raises(DataError, match=r"data.channels 2 repeats one-channel images, but tensors holds 3-channel "
                                        r"images; remove data.channels"):
        load_dataset(DataConfig(dataset="tensors", root=gray_rgb(tmp_path), channels=2))
    assert load_dataset(DataConfig(dataset="tensors", root=gray_rgb(tmp_path), channels=3)).input_shape == (3, 8, 8)


def gray_rgb(tmp_path):
    generator = np.random.default_rng(1)
    path = tmp_path / "rgb.npz"
    np.savez(path, x_train=generator.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8), y_train=np.arange(20) % 2,
             x_test=generator.integers(0, 256, (4, 3, 8, 8), dtype=np.uint8), y_test=np.arange(4) % 2)
    return path


# --- torch's warnings during a stacked forward -------------------------------------------------------


class WarnsLikeAMissingBatchingRule(nn.Module):
    """Warns as torch does when vmap meets an op without a batching rule."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x):
        warnings.warn("There is a performance drop because we have not yet implemented the batching rule for "
                      "aten::_transformer_encoder_layer_fwd. Please file us an issue on GitHub", UserWarning)
        return self.linear(x)


def test_the_vmap_probe_names_ops_without_a_batching_rule_once():
    reason, slow = probe_vmap([WarnsLikeAMissingBatchingRule(), WarnsLikeAMissingBatchingRule()], torch.randn(3, 4))
    assert reason is None and slow == ("aten::_transformer_encoder_layer_fwd",)


class TorchEncoder(nn.Module):
    """torch's own nn.TransformerEncoder: in eval mode without grad it takes the fused fast path, which vmap
    runs without a batching rule (the issue's example)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1)
        self.classifier = nn.Linear(16, 3)

    def forward(self, x):
        return self.classifier(self.encoder(x).mean(1))


def test_the_probe_meets_torchs_fused_transformer_layer_as_evaluation_does():
    torch.manual_seed(0)
    reason, slow = probe_vmap([TorchEncoder(), TorchEncoder()], torch.randn(4, 5, 16))
    assert reason is None and slow == ("aten::_transformer_encoder_layer_fwd",)


def test_hf_config_init_from_takes_every_other_layer_of_a_same_family_model(tmp_path):
    """DistilBERT's recipe: a 4-layer BERT gives a 2-layer student its layers 0 and 2, embeddings and head."""
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=CLASSES)
    torch.manual_seed(0)
    teacher = transformers.BertForSequenceClassification(config)
    teacher.save_pretrained(tmp_path / "bert4")
    student = build_model(HFConfigSpec(kwargs={"model_type": "bert"}, init_from=tmp_path / "bert4"),
                          (2, LENGTH), CLASSES, VOCAB).model
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 16
    theirs, ours = teacher.state_dict(), student.state_dict()
    for key in ours:
        source = key.replace("layer.1.", "layer.2.")
        assert torch.equal(ours[key], theirs[source]), key
    assert not torch.equal(ours["bert.encoder.layer.1.output.dense.weight"],
                           theirs["bert.encoder.layer.1.output.dense.weight"])
    with pytest.raises(ConfigError, match=r"init_from .*bert4 is a bert, kwargs.model_type distilbert"):
        build_model(HFConfigSpec(kwargs={"model_type": "distilbert"}, init_from=tmp_path / "bert4"),
                    (2, LENGTH), CLASSES, VOCAB)
