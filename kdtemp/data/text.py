"""Text classification data (`dataset: text`): tables of `text` and `label`, tokenised once and cached.

A text sample enters the engine as int64 (2, L): its token ids, then its attention mask (1 = a token,
0 = padding), so batches, stacking, the teacher-logit cache and the device transfer treat texts as they
treat images. The tokenizer is the user's (`data.tokenizer`: a tokenizer.json or a local transformers
folder) or a WordPiece one kdtemp trains on the training texts (never on validation or test texts), saved
beside the data and reused: the library's trainer breaks ties in an order that changes between
processes, so the same texts retrained can give other ids.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdtemp.config.schema import DataConfig
from kdtemp.data.dataset import CACHE_DIR, Dataset, token_inputs
from kdtemp.data.registry import register_dataset
from kdtemp.data.validation import held_out
from kdtemp.errors import CheckpointError, DataError, first_line
from kdtemp.store.files import atomic_torch_save, atomic_write_text, load_checkpoint

TABLE_SUFFIXES = (".csv", ".jsonl", ".parquet")
TEXT_LAYOUT = (
    "text expects root/train.csv and root/test.csv (or .jsonl or .parquet; optionally root/val.* as the "
    "validation split) with columns text and label"
)
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
"""The trained tokenizer's special tokens, ids 0..4, as BERT's WordPiece has them ([PAD] = 0)."""
PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>")
TEXT_CACHE_FORMAT = "kdtemp-text-cache/2"
"""/2: the saved tokenizer truncates to the padded length L (/1 truncated at max_length)."""


@dataclass(frozen=True)
class TextTokenizer:
    """A `tokenizers.Tokenizer` with the id it pads with, and where it came from (for the data's source)."""

    tokenizer: Any
    pad_id: int
    source: str

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))


# --- the loader ------------------------------------------------------------------------------------


@register_dataset("text")
def load_text(config: DataConfig) -> Dataset:
    """train/test (and optionally val) tables from `data.root`, tokenised to at most data.max_length tokens
    and padded to the longest text of the data. Class names are the labels sorted (numerically when every
    label is an integer), as an image folder's classes are its sorted folder names."""
    root = Path(config.root)
    if not root.is_dir():
        raise DataError(f"text root {root} is not a folder; {TEXT_LAYOUT}")
    files = table_files(root)
    cache = root / CACHE_DIR / f"text-{text_key(config, files)}.pt"
    cached = read_text_cache(cache)
    if cached is not None:
        return text_dataset(cached, f"{root}, tokenised by {cached['tokenizer_source']}, cached in {cache}")
    tables = {split: read_table(path) for split, path in files.items()}
    classes, labels = encode_labels(tables, files)
    texts = {split: list(table["text"]) for split, table in tables.items()}
    validation = f"{files['val'].name} (the data's own)" if "val" in files else ""
    if "val" not in files and config.val_fraction > 0:
        train_rows, val_rows, validation = held_out(labels["train"], config, "the text table's")
        all_texts, all_labels = texts["train"], labels["train"]
        texts["train"] = [all_texts[i] for i in train_rows.tolist()]
        texts["val"] = [all_texts[i] for i in val_rows.tolist()]
        labels["train"], labels["val"] = all_labels[train_rows], all_labels[val_rows]
    tokenizer = text_tokenizer(config, root, texts["train"])
    encoded = encode_texts(tokenizer, texts, config.max_length)
    arrays: dict[str, Any] = {
        "format": TEXT_CACHE_FORMAT,
        "classes": list(classes),
        "vocab_size": tokenizer.vocab_size,
        "tokenizer_json": tokenizer.tokenizer.to_str(),
        "tokenizer_source": tokenizer.source,
        "validation": validation,
    }
    for split, inputs in encoded.items():
        arrays[f"{split}_x"], arrays[f"{split}_y"] = inputs, labels[split]
    try:
        atomic_torch_save(arrays, cache)
        source = f"{root}, tokenised by {tokenizer.source}, cached in {cache}"
    except OSError:
        source = f"{root}, tokenised by {tokenizer.source} (root not writable: not cached)"
    return text_dataset(arrays, source)


def text_dataset(arrays: dict[str, Any], source: str) -> Dataset:
    has_val = "val_x" in arrays
    return Dataset(
        name="text",
        train_x=arrays["train_x"],
        train_y=arrays["train_y"],
        test_x=arrays["test_x"],
        test_y=arrays["test_y"],
        classes=tuple(arrays["classes"]),
        source=source,
        val_x=arrays["val_x"] if has_val else None,
        val_y=arrays["val_y"] if has_val else None,
        validation=arrays["validation"],
        vocab_size=int(arrays["vocab_size"]),
        tokenizer_json=arrays["tokenizer_json"],
    )


# --- tables ----------------------------------------------------------------------------------------


def table_files(root: Path) -> dict[str, Path]:
    """Split name -> its table file; train and test are required, val is optional."""
    files = {}
    for split in ("train", "val", "test"):
        found = [
            root / f"{split}{suffix}" for suffix in TABLE_SUFFIXES if (root / f"{split}{suffix}").is_file()
        ]
        if len(found) > 1:
            raise DataError(
                f"{root} holds {' and '.join(path.name for path in found)}; keep one table per split"
            )
        if found:
            files[split] = found[0]
        elif split != "val":
            raise DataError(f"{root} has no {split} table; {TEXT_LAYOUT}")
    return files


def read_table(path: Path):
    """The table as a pandas DataFrame with a str `text` column, refused in one line when it cannot serve."""
    import pandas as pd

    try:
        if path.suffix == ".csv":
            table = pd.read_csv(path, dtype={"text": str}, keep_default_na=False)
        elif path.suffix == ".jsonl":
            table = pd.read_json(path, lines=True, dtype=False)
        else:
            table = pd.read_parquet(path)
    except ImportError as exc:
        raise DataError(
            f"{path}: reading parquet needs pyarrow ({first_line(exc)}); pip install -e '.[text]'"
        ) from None
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable {path.suffix[1:]} table ({first_line(exc)})") from None
    missing = [column for column in ("text", "label") if column not in table.columns]
    if missing:
        raise DataError(
            f"{path} has no {' or '.join(missing)} column (it has {', '.join(map(str, table.columns))}); "
            "name the columns text and label"
        )
    if len(table) == 0:
        raise DataError(f"{path} holds no rows; give it texts")
    for row, (text, label) in enumerate(zip(table["text"], table["label"], strict=True), start=1):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path} row {row}: empty text; remove the row or give it text")
        if label is None or (isinstance(label, float) and np.isnan(label)) or str(label).strip() == "":
            raise DataError(f"{path} row {row}: no label; give every row a label")
    return table


def encode_labels(tables: dict, files: dict[str, Path]) -> tuple[tuple[str, ...], dict[str, torch.Tensor]]:
    """(class names, labels 0..C-1 per split): the train table's labels, sorted, numerically when each
    is an integer; a label of another split that train lacks is refused."""
    train_labels = [str(label).strip() for label in tables["train"]["label"]]
    distinct = set(train_labels)
    numeric = all(_is_integer(label) for label in distinct)
    classes = tuple(sorted(distinct, key=(lambda label: int(label)) if numeric else None))
    if len(classes) < 2:
        raise DataError(f"{files['train']}: every label is {classes[0]!r}; a classifier needs two classes")
    index = {name: position for position, name in enumerate(classes)}
    labels = {}
    for split, table in tables.items():
        values = [str(label).strip() for label in table["label"]]
        unknown = next(((row, v) for row, v in enumerate(values, start=1) if v not in index), None)
        if unknown is not None:
            raise DataError(
                f"{files[split]} row {unknown[0]}: label {unknown[1]!r} is not among the training labels "
                f"({', '.join(classes[:8])}{', ...' if len(classes) > 8 else ''}); "
                "give the training table every class"
            )
        labels[split] = torch.tensor([index[value] for value in values], dtype=torch.int64)
    return classes, labels


def _is_integer(label: str) -> bool:
    return label.lstrip("-").isdigit()


# --- tokenizers ------------------------------------------------------------------------------------


def text_tokenizer(config: DataConfig, root: Path, train_texts: list[str]) -> TextTokenizer:
    """data.tokenizer loaded, or a WordPiece tokenizer trained on `train_texts` (cached beside the data)."""
    if config.tokenizer is not None:
        return load_tokenizer(Path(config.tokenizer))
    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"wordpiece|{config.vocab_size}".encode())
    for text in train_texts:
        digest.update(text.encode() + b"\0")
    path = root / CACHE_DIR / f"tokenizer-{digest.hexdigest()}.json"
    if path.is_file():
        try:
            return with_pad_id(
                _tokenizers().Tokenizer.from_file(str(path)), f"its WordPiece tokenizer {path}"
            )
        except Exception:  # a torn or foreign file: train again
            pass
    tokenizer = train_wordpiece(train_texts, config.vocab_size)
    try:
        atomic_write_text(path, tokenizer.to_str())
        where = f"a WordPiece tokenizer trained on its training texts ({path})"
    except OSError:
        where = "a WordPiece tokenizer trained on its training texts (not saved: root not writable)"
    return with_pad_id(tokenizer, where)


def train_wordpiece(texts: list[str], vocab_size: int):
    """BERT's uncased WordPiece (lower-cased, split on whitespace and punctuation, [CLS] text [SEP]) trained
    on `texts` with the tokenizers library; special tokens are ids 0..4.

    Its trainer breaks ties between equally frequent merges in hash order, which changes from process to
    process, so a retrain can give other ids: that is why the trained tokenizer is saved and reused."""
    tokenizers = _tokenizers()
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    trainer = tokenizers.trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer.decoder = tokenizers.decoders.WordPiece()
    return tokenizer


def load_tokenizer(path: Path) -> TextTokenizer:
    """A tokenizer.json file, or a transformers model folder (its tokenizer.json, else AutoTokenizer's fast
    tokenizer from its local files)."""
    fix = "give a tokenizer.json saved by the tokenizers library or a local transformers model folder"
    if not path.exists():
        raise DataError(f"data.tokenizer {path} not found; {fix}")
    file = path / "tokenizer.json" if path.is_dir() else path
    if file.is_file():
        try:
            tokenizer = _tokenizers().Tokenizer.from_file(str(file))
        except Exception as exc:
            raise DataError(f"data.tokenizer {file} does not load ({first_line(exc)}); {fix}") from None
        return with_pad_id(tokenizer, str(file))
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(
            f"data.tokenizer {path} has no tokenizer.json, and reading it needs transformers: "
            "pip install -e '.[text]'"
        ) from None
    try:
        loaded = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
        backend = loaded.backend_tokenizer
    except Exception as exc:
        raise DataError(f"data.tokenizer {path} does not load ({first_line(exc)}); {fix}") from None
    return with_pad_id(backend, str(path), pad_id=loaded.pad_token_id)


def with_pad_id(tokenizer, source: str, pad_id: int | None = None) -> TextTokenizer:
    """The tokenizer with the id it pads with: given, its own padding's, or that of [PAD] / <pad>."""
    if pad_id is None and tokenizer.padding is not None:
        pad_id = tokenizer.padding.get("pad_id")
    for token in PAD_TOKENS:
        if pad_id is None:
            pad_id = tokenizer.token_to_id(token)
    if pad_id is None:
        raise DataError(
            f"data.tokenizer {source} has no padding token ({' or '.join(PAD_TOKENS)}); add one to it"
        )
    return TextTokenizer(tokenizer, int(pad_id), source)


def encode_texts(
    tokenizer: TextTokenizer, texts: dict[str, list[str]], max_length: int
) -> dict[str, torch.Tensor]:
    """Every split's texts as int64 (N, 2, L): at most `max_length` tokens each (the tokenizer's own
    truncation, so [CLS]/[SEP] stay), padded with its pad id to L, the longest text of all splits. The
    tokenizer is left truncating and padding to L, for the copy saved with the experiment."""
    backend = tokenizer.tokenizer
    backend.no_padding()
    backend.enable_truncation(max_length)
    encodings = {split: backend.encode_batch(values) for split, values in texts.items()}
    length = max(len(encoding.ids) for split in encodings.values() for encoding in split)
    inputs = {}
    for split, batch in encodings.items():
        ids = np.full((len(batch), length), tokenizer.pad_id, dtype=np.int64)
        mask = np.zeros((len(batch), length), dtype=np.int64)
        for row, encoding in enumerate(batch):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        inputs[split] = token_inputs(torch.from_numpy(ids), torch.from_numpy(mask))
    # as saved with the experiment, the tokenizer gives a new text the ids and mask the model was trained on,
    # cut and padded to L: the length an exported student (and a transformer's position table) takes
    backend.enable_truncation(length)
    backend.enable_padding(
        length=length, pad_id=tokenizer.pad_id, pad_token=backend.id_to_token(tokenizer.pad_id)
    )
    return inputs


# --- the cache -------------------------------------------------------------------------------------


def text_key(config: DataConfig, files: dict[str, Path]) -> str:
    """Hash of what the tokenised cache depends on: each table's name, size and mtime, the tokenizer (its
    file's size and mtime, or the trained one's vocabulary size), max_length and the validation split."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(
        f"{TEXT_CACHE_FORMAT}|{config.max_length}|{config.val_fraction}|{config.split_seed}".encode()
    )
    for split, path in files.items():
        stat = path.stat()
        digest.update(f"|{split}|{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    if config.tokenizer is None:
        digest.update(f"|wordpiece|{config.vocab_size}".encode())
    else:
        tokenizer = Path(config.tokenizer)
        paths = sorted(p for p in tokenizer.rglob("*") if p.is_file()) if tokenizer.is_dir() else [tokenizer]
        for path in paths:
            found = path.stat() if path.exists() else None
            size, mtime = (found.st_size, found.st_mtime_ns) if found else (None, None)
            digest.update(f"|{path.resolve()}|{size}|{mtime}".encode())
    return digest.hexdigest()


def read_text_cache(path: Path) -> dict[str, Any] | None:
    """The cached arrays, or None when absent or unreadable (then the tables are tokenised again)."""
    try:
        cached = load_checkpoint(path, "text cache")
    except CheckpointError:
        return None
    keys = ("train_x", "train_y", "test_x", "test_y")
    if cached.get("format") != TEXT_CACHE_FORMAT or not all(
        isinstance(cached.get(k), torch.Tensor) for k in keys
    ):
        return None
    return cached


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise DataError("text data needs the tokenizers library: pip install -e '.[text]'") from None
    return tokenizers
