"""The built-in text classifiers: a fastText-style embedding bag and a small Transformer encoder.

They read int64 inputs (N, 2, L): token ids, then the attention mask (1 = a token, 0 = padding), the
layout kdtemp.data.text builds. Padding never reaches a prediction: masked positions are left out of
every mean and every attention. Written from plain ops (embedding lookups, matmuls, layer norm), with
nothing updated in place, so `vmap` stacks the students of a sweep and no batching rule is missing.
"""

from __future__ import annotations

import torch
from torch import nn

from kdtemp.config.model_specs import EmbeddingBagSpec, TransformerSpec

BIGRAM_PRIME = 1_000_003
"""Mixes the first token of a bigram into its hash bucket: (a * P + b) mod buckets, as fastText hashes."""


def split_tokens(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (N, L) int64, mask (N, L) float) of text inputs (N, 2, L)."""
    return inputs[:, 0], inputs[:, 1].float()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of values (N, L, D) where mask (N, L) is 1; an all-padding row gives zeros."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class EmbeddingBagClassifier(nn.Module):
    """fastText (Joulin et al. 2017, "Bag of Tricks for Efficient Text Classification"): the mean of the
    text's token embeddings, with ngrams 2 also of its hashed bigram embeddings, then `classifier`."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embedding_dim: int,
        hidden: int,
        ngrams: int,
        buckets: int,
        dropout: float,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.bigrams = nn.Embedding(buckets, embedding_dim) if ngrams == 2 else None
        layers: list[nn.Module] = []
        if hidden:
            layers += [nn.Linear(embedding_dim, hidden), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(hidden or embedding_dim, num_classes)
        self.buckets = buckets

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        ids, mask = split_tokens(inputs)
        embedded, weights = self.embedding(ids), mask
        if self.bigrams is not None:
            buckets = (ids[:, :-1] * BIGRAM_PRIME + ids[:, 1:]) % self.buckets
            embedded = torch.cat([embedded, self.bigrams(buckets)], dim=1)
            weights = torch.cat([mask, mask[:, :-1] * mask[:, 1:]], dim=1)
        return self.classifier(self.features(masked_mean(embedded, weights)))


class EncoderLayer(nn.Module):
    """Pre-norm Transformer layer: x + attention(LN(x)), then x + FFN(LN(x)) (Xiong et al. 2020)."""

    def __init__(self, d_model: int, heads: int, feed_forward: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, feed_forward), nn.GELU(), nn.Dropout(dropout), nn.Linear(feed_forward, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / (width // self.heads) ** 0.5
        # padding keys get the most negative score the dtype holds: exp() makes their weight exactly 0
        keep = mask[:, None, None, :] > 0
        scores = scores.masked_fill(~keep, torch.finfo(scores.dtype).min)
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, width)
        x = x + self.dropout(self.out(attended))
        return x + self.dropout(self.ffn(self.norm2(x)))


class TransformerClassifier(nn.Module):
    """Token + learned position embeddings, `layers` encoder layers, a final layer norm, then the mean of
    the unmasked tokens (pooling mean) or the first token ([CLS], pooling cls), then `classifier`."""

    def __init__(
        self,
        vocab_size: int,
        length: int,
        num_classes: int,
        layers: int,
        d_model: int,
        heads: int,
        feed_forward: int,
        dropout: float,
        pooling: str,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.position = nn.Parameter(torch.randn(length, d_model) * 0.02)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, heads, feed_forward, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(d_model, num_classes)
        self.pooling = pooling

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        ids, mask = split_tokens(inputs)
        x = self.dropout(self.embedding(ids) + self.position[: ids.shape[1]])
        for layer in self.layers:
            x = layer(x, mask)
        x = self.norm(x)
        pooled = masked_mean(x, mask) if self.pooling == "mean" else x[:, 0]
        return self.classifier(pooled)


def build_embedding_bag(
    spec: EmbeddingBagSpec, input_shape: tuple[int, ...], num_classes: int, vocab_size: int
) -> nn.Module:
    return EmbeddingBagClassifier(
        vocab_size, num_classes, spec.embedding_dim, spec.hidden, spec.ngrams, spec.buckets, spec.dropout
    )


def build_transformer(
    spec: TransformerSpec, input_shape: tuple[int, ...], num_classes: int, vocab_size: int
) -> nn.Module:
    return TransformerClassifier(
        vocab_size,
        input_shape[-1],
        num_classes,
        spec.layers,
        spec.d_model,
        spec.heads,
        spec.feed_forward,
        spec.dropout,
        spec.pooling,
    )
