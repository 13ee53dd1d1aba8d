"""Text data: tables read, labels named, tokenised as the `tokenizers` library itself tokenises, cached,
and every malformed input refused in one line."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from kdtemp.config.schema import DataConfig
from kdtemp.data.registry import load_dataset
from kdtemp.data.synthetic_text import review_texts
from kdtemp.data.text import SPECIAL_TOKENS
from kdtemp.errors import DataError


def write_table(root, split, rows, suffix=".csv"):
    root.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=["text", "label"])
    path = root / f"{split}{suffix}"
    if suffix == ".csv":
        table.to_csv(path, index=False)
    elif suffix == ".jsonl":
        table.to_json(path, orient="records", lines=True)
    else:
        table.to_parquet(path)
    return path


def write_reviews(root, train=240, test=60, suffix=".csv"):
    write_table(root, "train", review_texts(train, 1), suffix)
    write_table(root, "test", review_texts(test, 2), suffix)
    return root


def expected_inputs(tokenizer: Tokenizer, texts, max_length, length, pad_id=0):
    """What the text layout should hold, from the tokenizers library called here directly."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    ids = torch.full((len(texts), length), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(texts), length), dtype=torch.int64)
    for row, text in enumerate(texts):
        encoded = tokenizer.encode(text).ids
        ids[row, : len(encoded)] = torch.tensor(encoded)
        mask[row, : len(encoded)] = 1
    return torch.stack([ids, mask], 1)


def test_trained_tokenizer_gives_the_libraries_ids_and_is_cached(tmp_path):
    root = write_reviews(tmp_path / "reviews")
    config = DataConfig(dataset="text", root=root, max_length=12, vocab_size=300)
    data = load_dataset(config)
    assert data.is_text and not data.is_image and data.train_x.dtype == torch.int64
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (216, 24, 60)
    saved = list((root / ".kdtemp-cache").glob("tokenizer-*.json"))
    assert len(saved) == 1
    tokenizer = Tokenizer.from_file(str(saved[0]))
    assert [tokenizer.id_to_token(i) for i in range(5)] == list(SPECIAL_TOKENS)
    assert data.vocab_size == tokenizer.get_vocab_size()
    test_texts = [text for text, _ in review_texts(60, 2)]
    expected = expected_inputs(tokenizer, test_texts, 12, data.input_shape[-1])
    assert torch.equal(data.test_x, expected)
    # every text was longer than 12 tokens: cut to 12, [SEP] kept last
    assert data.input_shape == (2, 12)
    assert int(data.test_x[0, 0, -1]) == tokenizer.token_to_id("[SEP]")
    again = load_dataset(config)
    assert "cached in" in again.source and torch.equal(again.train_x, data.train_x)
    assert again.fingerprint() == data.fingerprint()


def test_the_tokenizer_is_trained_on_training_texts_only(tmp_path):
    """A word only in validation or test texts is not in the vocabulary: it reads as [UNK]."""
    rows = [(f"common words {i % 3}", str(i % 2)) for i in range(40)]
    root = tmp_path / "texts"
    write_table(root, "train", rows)
    write_table(root, "test", [("zebraword common", "0"), ("words", "1")])
    data = load_dataset(DataConfig(dataset="text", root=root, vocab_size=100))
    tokenizer = Tokenizer.from_str(data.tokenizer_json)
    assert tokenizer.token_to_id("zebraword") is None
    assert int(data.test_x[0, 0, 1]) == tokenizer.token_to_id("[UNK]")


def test_the_saved_tokenizer_is_reused_when_the_tokenised_cache_is_gone(tmp_path):
    """The trainer of tokenizers numbers ties differently from process to process: reuse, never retrain."""
    root = write_reviews(tmp_path / "reviews", 100, 20)
    config = DataConfig(dataset="text", root=root)
    first = load_dataset(config)
    for cache in (root / ".kdtemp-cache").glob("text-*.pt"):
        cache.unlink()
    again = load_dataset(config)
    assert "its WordPiece tokenizer" in again.source and "trained on" not in again.source
    assert again.fingerprint() == first.fingerprint()


def trained_tokenizer(path, texts):
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]", "[PAD]"]))
    tokenizer.post_processor = processors.TemplateProcessing(single="$A")
    tokenizer.save(str(path))
    return path


def test_a_given_tokenizer_json_is_used_as_it_tokenises(tmp_path):
    path = trained_tokenizer(tmp_path / "tokenizer.json", [text for text, _ in review_texts(200, 4)])
    tokenizer = Tokenizer.from_file(str(path))
    root = write_reviews(tmp_path / "reviews", train=100, test=30)
    data = load_dataset(DataConfig(dataset="text", root=root, tokenizer=path, max_length=64, val_fraction=0))
    pad = tokenizer.token_to_id("[PAD]")
    test_texts = [text for text, _ in review_texts(30, 2)]
    assert torch.equal(data.test_x, expected_inputs(Tokenizer.from_file(str(path)), test_texts, 64,
                                                    data.input_shape[-1], pad_id=pad))
    assert str(path) in data.source


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_jsonl_and_parquet_read_as_csv_does(tmp_path, suffix):
    tokenizer = trained_tokenizer(tmp_path / "tokenizer.json", [text for text, _ in review_texts(200, 4)])
    csv_data = load_dataset(DataConfig(dataset="text", root=write_reviews(tmp_path / "csv", 80, 20), tokenizer=tokenizer))
    other = load_dataset(DataConfig(dataset="text", root=write_reviews(tmp_path / "other", 80, 20, suffix),
                                    tokenizer=tokenizer))
    for split in ("train", "val", "test"):
        assert torch.equal(csv_data.split(split)[0], other.split(split)[0])
        assert torch.equal(csv_data.split(split)[1], other.split(split)[1])
    assert csv_data.classes == other.classes == ("film-bad", "film-good", "food-bad", "food-good")


def test_labels_are_sorted_numerically_when_integers_and_a_val_table_is_the_split(tmp_path):
    root = tmp_path / "numbers"
    write_table(root, "train", [("a b", 10), ("c d", 2), ("e f", 10), ("g h", 2)])
    write_table(root, "val", [("a d", 2)])
    write_table(root, "test", [("b c", 10)])
    data = load_dataset(DataConfig(dataset="text", root=root, vocab_size=50))
    assert data.classes == ("2", "10")
    assert data.train_y.tolist() == [1, 0, 1, 0] and data.test_y.tolist() == [1]
    assert data.val_y.tolist() == [0] and data.validation == "val.csv (the data's own)"


def test_int64_token_ids_in_a_tensors_file(tmp_path):
    generator = np.random.default_rng(0)
    ids = {split: generator.integers(0, 50, (n, 7)) for split, n in (("train", 30), ("test", 10))}
    mask = np.ones((10, 7), dtype=np.int64)
    mask[:, 5:] = 0
    path = tmp_path / "tokens.npz"
    np.savez(path, x_train=ids["train"], y_train=generator.integers(0, 3, 30), x_test=ids["test"],
             y_test=generator.integers(0, 3, 10), mask_test=mask, vocab_size=np.array(64))
    data = load_dataset(DataConfig(dataset="tensors", root=path, val_fraction=0))
    assert data.is_text and data.vocab_size == 64 and data.input_shape == (2, 7)
    assert torch.equal(data.test_x[:, 0], torch.from_numpy(ids["test"]))
    assert torch.equal(data.test_x[:, 1], torch.from_numpy(mask)) and bool((data.train_x[:, 1] == 1).all())
    np.savez(path, x_train=ids["train"], y_train=generator.integers(0, 3, 30), x_test=ids["test"],
             y_test=generator.integers(0, 3, 10), mask_test=mask * 2)
    with pytest.raises(DataError, match="mask_test must be 0/1"):
        load_dataset(DataConfig(dataset="tensors", root=path, val_fraction=0))


def good_rows(count=12):
    return [(f"word{i % 4} other{i % 3}", "ab"[i % 2]) for i in range(count)]


def bad_texts(root):
    write_table(root, "train", [*good_rows(), ("   ", "a")])
    write_table(root, "test", good_rows(4))


def missing_column(root):
    root.mkdir(parents=True)
    pd.DataFrame({"sentence": ["a b"], "label": ["a"]}).to_csv(root / "train.csv", index=False)
    write_table(root, "test", good_rows(4))


def unknown_label(root):
    write_table(root, "train", good_rows())
    write_table(root, "test", [*good_rows(3), ("word1", "c")])


def no_test(root):
    write_table(root, "train", good_rows())


def two_tables(root):
    write_table(root, "train", good_rows())
    write_table(root, "train", good_rows(), ".jsonl")
    write_table(root, "test", good_rows(4))


def broken_tokenizer(root):
    write_table(root, "train", good_rows())
    write_table(root, "test", good_rows(4))
    (root / "tok.json").write_text(json.dumps({"not": "a tokenizer"}))


REFUSALS = [
    (bad_texts, {}, r"train.csv row 13: empty text; remove the row or give it text"),
    (missing_column, {}, r"train.csv has no text column \(it has sentence, label\); name the columns text and label"),
    (unknown_label, {}, r"test.csv row 4: label 'c' is not among the training labels \(a, b\)"),
    (no_test, {}, r"has no test table; text expects root/train.csv and root/test.csv"),
    (two_tables, {}, r"holds train.csv and train.jsonl; keep one table per split"),
    (broken_tokenizer, {"tokenizer": "tok.json"}, r"data.tokenizer .*tok.json does not load \(.*\); give a tokenizer.json"),
]


@pytest.mark.parametrize("make, settings, message", REFUSALS, ids=[r[0].__name__ for r in REFUSALS])
def test_bad_text_data_is_refused_in_one_line_and_nothing_is_written(tmp_path, make, settings, message):
    root = tmp_path / "texts"
    make(root)
    if "tokenizer" in settings:
        settings = {"tokenizer": root / settings["tokenizer"]}
    with pytest.raises(DataError, match=message) as caught:
        load_dataset(DataConfig(dataset="text", root=root, vocab_size=50, **settings))
    assert "\n" not in str(caught.value)
    assert not (root / ".kdtemp-cache").exists()


def test_a_transformers_folder_without_tokenizer_json_tokenises_as_transformers_does(tmp_path):
    """A BERT folder holding only vocab.txt: read through AutoTokenizer (local files), ids as it gives them."""
    transformers = pytest.importorskip("transformers")
    words = sorted({word for text, _ in review_texts(200, 1) for word in text.split()})
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words[:150]]) + "\n")
    folder = tmp_path / "bert-tokenizer"
    transformers.BertTokenizer(str(vocab)).save_pretrained(folder)
    (folder / "tokenizer.json").unlink(missing_ok=True)
    root = write_reviews(tmp_path / "reviews", train=60, test=20)
    data = load_dataset(DataConfig(dataset="text", root=root, tokenizer=folder, max_length=16, val_fraction=0))
    reference = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    test_texts = [text for text, _ in review_texts(20, 2)]
    encoded = reference(test_texts, truncation=True, max_length=16, padding="max_length")
    length = data.input_shape[-1]
    assert torch.equal(data.test_x[:, 0], torch.tensor(encoded["input_ids"])[:, :length])
    assert torch.equal(data.test_x[:, 1], torch.tensor(encoded["attention_mask"])[:, :length])
    assert int(data.test_x[:, 1].sum()) < data.test_x[:, 1].numel()  # some texts have [UNK]s and padding
