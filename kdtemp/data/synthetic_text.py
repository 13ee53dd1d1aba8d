"""A synthetic review task, generated locally, for trying text distillation without a network.

Each text mixes filler words with topic nouns (two topics) and one to three sentiment phrases of its
mood: a word of the mood ("very" before it at times) or "not"/"never" before a word of the opposite
mood. The label is topic and mood (4 classes), with 5% of labels redrawn at random. Word order matters
(a flip needs its neighbour), so an encoder that reads order beats a bag of words, and its soft targets
carry what the bag misses.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from kdtemp.store.files import atomic_write_text

TOPICS = ("food", "film")
CLASSES = tuple(f"{topic}-{mood}" for topic in TOPICS for mood in ("good", "bad"))
NEGATORS = ("not", "never")
INTENSIFIER = "very"


def words(generator: np.random.Generator, count: int, syllables: int) -> list[str]:
    """`count` distinct made-up words of `syllables` consonant-vowel syllables."""
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    found: dict[str, None] = {}
    while len(found) < count:
        found[
            "".join(
                generator.choice(list(consonants)) + generator.choice(list(vowels)) for _ in range(syllables)
            )
        ] = None
    return list(found)


def review_texts(count: int, seed: int) -> list[tuple[str, str]]:
    """(text, label) pairs of the task, drawn with a generator seeded with `seed` (the vocabulary always
    from seed 0, so train and test share it)."""
    vocabulary = np.random.default_rng(0)
    filler = words(vocabulary, 300, 2)
    nouns = {topic: words(vocabulary, 20, 3) for topic in TOPICS}
    sentiment = {"good": words(vocabulary, 30, 3), "bad": words(vocabulary, 30, 3)}
    opposite = {"good": "bad", "bad": "good"}
    generator = np.random.default_rng(seed)

    def pick(choices: list[str] | tuple[str, ...]) -> str:
        return choices[int(generator.integers(len(choices)))]

    rows = []
    for _ in range(count):
        topic, mood = pick(TOPICS), pick(("good", "bad"))
        tokens: list[str] = []
        for _ in range(int(generator.integers(1, 4))):
            tokens += [pick(filler) for _ in range(int(generator.integers(1, 5)))]
            if generator.random() < 0.5:
                tokens.append(pick(nouns[topic]))
            draw = generator.random()
            if draw < 0.4:  # "not <opposite word>": only word order tells it from the opposite mood
                tokens += [pick(NEGATORS), pick(sentiment[opposite[mood]])]
            elif draw < 0.55:
                tokens += [INTENSIFIER, pick(sentiment[mood])]
            else:
                tokens.append(pick(sentiment[mood]))
        tokens += [pick(filler), pick(nouns[topic])]
        label = f"{topic}-{mood}" if generator.random() >= 0.05 else pick(CLASSES)
        rows.append((" ".join(tokens), label))
    return rows


def write_reviews(root: Path, train: int = 8000, test: int = 2000, seed: int = 0) -> list[Path]:
    """root/train.csv and root/test.csv (columns text, label) of the synthetic review task."""
    paths = []
    for split, count, split_seed in (("train", train, seed + 1), ("test", test, seed + 2)):
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["text", "label"])
        writer.writerows(review_texts(count, split_seed))
        path = Path(root) / f"{split}.csv"
        atomic_write_text(path, buffer.getvalue())
        paths.append(path)
    return paths
