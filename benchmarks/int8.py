"""int8 for minilm's linear layers: how far each scheme moves the embeddings, and how fast it is.

The question PRECISION=auto asks of any reduced precision: does every embedding stay within the
manifest's bound (min cosine 0.999 to fp32) on varied sentences? Schemes measured:

- dynamic-tensor: torch's dynamic quantisation (int8 weights per tensor, activations per tensor
  at run time), the fast CPU path (fbgemm/oneDNN VNNI kernels);
- dynamic-channel: the same with per-channel weights;
- token-channel: activations per token and weights per channel, simulated in fp32 (quantise,
  dequantise), the most accurate plain int8 scheme; its per-layer sensitivity, and the most
  layers a greedy choice can keep in int8 within the bound.

    .venv/bin/python -m benchmarks.int8
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from loadtests.report import cpu_model
from service.packaging.bert import BertConfig, MeanPooledEmbedder, load_bert_weights
from service.packaging.bundled import minilm

Inputs = tuple[torch.Tensor, torch.Tensor]


def load_fp32() -> tuple[MeanPooledEmbedder, Callable[[list[str]], Inputs]]:
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    source = minilm.source_dir()
    config = BertConfig.read(source / "config.json")
    model = MeanPooledEmbedder(config, normalize=True).eval()
    load_bert_weights(model, load_file(str(source / "model.safetensors")), config.layers)
    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0)
    tokenizer.enable_truncation(max_length=256)

    def tokenise(texts: list[str]) -> Inputs:
        encoded = tokenizer.encode_batch(texts)
        return (
            torch.tensor([e.ids for e in encoded]),
            torch.tensor([e.attention_mask for e in encoded]),
        )

    return model, tokenise


class TokenChannelLinear(nn.Module):
    """int8 per output channel (weights) and per token (activations), in fp32 arithmetic."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach()
        scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
        self.weight = nn.Parameter((weight / scale).round().clamp(-127, 127) * scale)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127
        quantised = (x / scale).round().clamp(-127, 127) * scale
        return nn.functional.linear(quantised, self.weight, self.bias)


def with_token_channel(model: nn.Module, layers: set[str]) -> nn.Module:
    quantised = copy.deepcopy(model)
    for name in layers:
        parent, _, attribute = name.rpartition(".")
        module = quantised.get_submodule(parent)
        setattr(module, attribute, TokenChannelLinear(getattr(module, attribute)))
    return quantised


def min_cosine(reference: torch.Tensor, model: nn.Module, inputs: Inputs) -> float:
    with torch.inference_mode():
        got = model(*inputs)
    return float(nn.functional.cosine_similarity(reference, got, dim=1).min())


def throughput(
    model: Callable[..., Any], inputs: tuple[torch.Tensor, ...], seconds: float
) -> float:
    with torch.inference_mode():
        for _ in range(3):
            model(*inputs)
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            model(*inputs)
            done += inputs[0].shape[0]
    return done / (time.perf_counter() - began)


def _weights(model: nn.Module, name: str) -> int:
    linear = model.get_submodule(name)
    assert isinstance(linear, nn.Linear)
    return linear.weight.numel()


def main(argv: list[str] | None = None) -> int:
    from tests.sentences import PARAPHRASES, SENTENCES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput figure")
    parser.add_argument("--bound", type=float, default=minilm.MIN_COSINE)
    parser.add_argument("--texts", type=int, help="measure on the first N texts only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, tokenise = load_fp32()
    texts = (SENTENCES + [text for triple in PARAPHRASES for text in triple])[: args.texts]
    inputs = tokenise(texts)
    with torch.inference_mode():
        reference = model(*inputs)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    print(f"minilm, {len(texts)} texts, {args.threads} threads, {cpu_model()}\n")

    timed = tokenise(SENTENCES[:16])
    schemes: dict[str, nn.Module] = {
        "fp32": model,
        "dynamic-tensor": torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8
        ),
        "dynamic-channel": torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            copy.deepcopy(model), {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}
        ),
        "token-channel (simulated)": with_token_channel(model, set(linears)),
    }
    print("| scheme | min cosine to fp32 | sentences/s, batch 16 |")
    print("|---|---:|---:|")
    for name, scheme in schemes.items():
        speed = "-" if "simulated" in name else f"{throughput(scheme, timed, args.seconds):.0f}"
        print(f"| {name} | {min_cosine(reference, scheme, inputs):.5f} | {speed} |")

    alone = {n: min_cosine(reference, with_token_channel(model, {n}), inputs) for n in linears}
    print("\n| token-channel, one layer alone | min cosine |\n|---|---:|")
    for name, cosine in sorted(alone.items(), key=lambda item: item[1]):
        print(f"| {name} | {cosine:.6f} |")

    kept: set[str] = set()
    for name in sorted(linears, key=alone.__getitem__, reverse=True):
        if min_cosine(reference, with_token_channel(model, kept | {name}), inputs) >= args.bound:
            kept.add(name)
    cosine = min_cosine(reference, with_token_channel(model, kept), inputs)
    weights = sum(_weights(model, n) for n in kept)
    total = sum(_weights(model, n) for n in linears)
    print(
        f"\nGreedy, least sensitive first, within {args.bound}: {len(kept)} of {len(linears)}"
        f" layers in int8 ({weights / total:.0%} of the linear weights), min cosine {cosine:.6f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
