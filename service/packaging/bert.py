"""A BERT encoder written against torch only, built from a Hugging Face `config.json`.

Neither transformers nor sentence-transformers is needed to build or to serve: the weights are
mapped from a BertModel (or BertForSequenceClassification) state dict, and pooling, L2
normalisation or the classifier's softmax are part of the exported graph.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from service.packaging.errors import PackagingError


@dataclass(frozen=True)
class BertConfig:
    hidden: int
    heads: int
    layers: int
    intermediate: int
    vocab: int
    max_positions: int
    eps: float
    id2label: dict[int, str]

    @classmethod
    def read(cls, path: Path) -> BertConfig:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise PackagingError(f"{path}: unreadable: {e}") from e
        if raw.get("model_type") != "bert":
            raise PackagingError(
                f"{path}: model_type {raw.get('model_type')!r}; only BERT-family encoders are"
                " supported (package others with --module)"
            )
        if (
            raw.get("hidden_act", "gelu") != "gelu"
            or raw.get("position_embedding_type", "absolute") != "absolute"
        ):
            raise PackagingError(f"{path}: only gelu activations and absolute positions")
        labels = raw.get("id2label") or {}
        return cls(
            hidden=raw["hidden_size"],
            heads=raw["num_attention_heads"],
            layers=raw["num_hidden_layers"],
            intermediate=raw["intermediate_size"],
            vocab=raw["vocab_size"],
            max_positions=raw["max_position_embeddings"],
            eps=raw.get("layer_norm_eps", 1e-12),
            id2label={int(k): str(v) for k, v in labels.items()},
        )


class _Layer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.attention_out = nn.Linear(config.hidden, config.hidden)
        self.attention_norm = nn.LayerNorm(config.hidden, eps=config.eps)
        self.intermediate = nn.Linear(config.hidden, config.intermediate)
        self.output = nn.Linear(config.intermediate, config.hidden)
        self.output_norm = nn.LayerNorm(config.hidden, eps=config.eps)

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, seq, width = hidden.shape
        q, k, v = (
            self.qkv(hidden)
            .view(batch, seq, 3, self.heads, width // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        context = context.transpose(1, 2).reshape(batch, seq, width)
        hidden = self.attention_norm(hidden + self.attention_out(context))
        normed: torch.Tensor = self.output_norm(
            hidden + self.output(F.gelu(self.intermediate(hidden)))
        )
        return normed


class BertEncoder(nn.Module):
    """Token ids and attention mask in; the last hidden states (batch, seq, hidden) out."""

    positions: torch.Tensor

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab, config.hidden)
        self.position_embeddings = nn.Embedding(config.max_positions, config.hidden)
        # Every input is one segment: token type 0's embedding is a constant to add.
        self.token_type = nn.Parameter(torch.zeros(config.hidden))
        self.embedding_norm = nn.LayerNorm(config.hidden, eps=config.eps)
        self.layers = nn.ModuleList(_Layer(config) for _ in range(config.layers))
        self.register_buffer(
            "positions", torch.arange(config.max_positions)[None, :], persistent=False
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seq = input_ids.shape[1]
        hidden = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(self.positions[:, :seq])
            + self.token_type
        )
        hidden = self.embedding_norm(hidden)
        keep = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            hidden = layer(hidden, keep)
        encoded: torch.Tensor = hidden
        return encoded


class MeanPooledEmbedder(nn.Module):
    """Mean pooling over the attention mask, then (optionally) L2 normalisation."""

    def __init__(self, config: BertConfig, *, normalize: bool) -> None:
        super().__init__()
        self.encoder = BertEncoder(config)
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1) if self.normalize else pooled


class SequenceClassifier(nn.Module):
    """BertForSequenceClassification's head: tanh pooler on [CLS], a linear layer, softmax."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.encoder = BertEncoder(config)
        self.pooler = nn.Linear(config.hidden, config.hidden)
        self.classifier = nn.Linear(config.hidden, len(config.id2label) or 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        cls = self.encoder(input_ids, attention_mask)[:, 0]
        return torch.softmax(self.classifier(torch.tanh(self.pooler(cls))), dim=1)


def load_bert_weights(module: nn.Module, state: dict[str, torch.Tensor], layers: int) -> None:
    """Map a BertModel or BertForSequenceClassification state dict onto `module`."""
    state = {k.removeprefix("bert."): v for k, v in state.items()}
    try:
        mapped = {
            "encoder.word_embeddings.weight": state["embeddings.word_embeddings.weight"],
            "encoder.position_embeddings.weight": state["embeddings.position_embeddings.weight"],
            "encoder.token_type": state["embeddings.token_type_embeddings.weight"][0],
            "encoder.embedding_norm.weight": state["embeddings.LayerNorm.weight"],
            "encoder.embedding_norm.bias": state["embeddings.LayerNorm.bias"],
        }
        for i in range(layers):
            src, dst = f"encoder.layer.{i}.", f"encoder.layers.{i}."
            attn, out = src + "attention.self.", src + "attention.output."
            for part in ("weight", "bias"):
                mapped[dst + f"qkv.{part}"] = torch.cat(
                    [state[attn + f"{name}.{part}"] for name in ("query", "key", "value")]
                )
                mapped[dst + f"attention_out.{part}"] = state[out + f"dense.{part}"]
                mapped[dst + f"attention_norm.{part}"] = state[out + f"LayerNorm.{part}"]
                mapped[dst + f"intermediate.{part}"] = state[src + f"intermediate.dense.{part}"]
                mapped[dst + f"output.{part}"] = state[src + f"output.dense.{part}"]
                mapped[dst + f"output_norm.{part}"] = state[src + f"output.LayerNorm.{part}"]
        if isinstance(module, SequenceClassifier):
            for part in ("weight", "bias"):
                mapped[f"pooler.{part}"] = state[f"pooler.dense.{part}"]
                mapped[f"classifier.{part}"] = state[f"classifier.{part}"]
    except KeyError as e:
        raise PackagingError(f"the weights lack {e.args[0]!r}: not a BERT checkpoint") from None
    try:
        module.load_state_dict(mapped, strict=True)
    except RuntimeError as e:
        raise PackagingError(f"the weights do not fit config.json: {e}") from e
