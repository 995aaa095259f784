"""What the text handlers share: checking texts, tokenising them, and cutting batches by length.

Used by composition (`TextInputs`), so that a text handler can still inherit from the base of
its output kind (embeddings, classifications).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from service.runtime.errors import InvalidInput, RequestTooCostly
from service.runtime.handlers.base import ModelHandler, Prepared

# The most padded tokens (texts x longest text) in one forward pass: 64 sentences of 32 tokens,
# or 8 texts at the 256-token limit. On a CPU the cost per token is about flat across such
# sizes (measured on one core: 1,850-2,900 tokens/s from 16x32 to 16x256), so cutting a batch
# costs little; padding is what costs.
TOKENS_PER_PASS = 2048
# What one more forward pass costs beyond its tokens, counted in tokens: minilm on one AMD EPYC
# core, fp32, took ~0.25-0.3 ms a token and 7-10 ms more a pass (1x16: 11 ms, 8x16: 39 ms,
# 32x16: 138 ms). Cutting a batch where it saves more padding than this served 1.1-1.6x the
# texts/s on mixed lengths (benchmarks/padding.py). A GPU pays its launches per pass, and
# padding within the budget costs it little: there a batch is cut only at the budget.
CPU_PASS_OVERHEAD_TOKENS = 32
# The most tokens one request may hold after truncation, unless its manifest says otherwise:
# 32 texts at the 256-token limit, four passes. Characters alone do not bound the cost.
MAX_REQUEST_TOKENS = 4 * TOKENS_PER_PASS


class TextInputs:
    """The manifest's tokenizer and limits. The context of a Prepared is (tokens, truncated)."""

    def __init__(self, handler: ModelHandler[Any, Any]) -> None:
        pre = handler.manifest.preprocessing
        self.max_tokens = int(pre["max_tokens"])
        self.max_chars = int(pre["max_chars"])
        self.max_request_tokens = int(pre.get("max_request_tokens", MAX_REQUEST_TOKENS))
        self.input_name = handler.manifest.inputs[0].name
        self.pass_overhead_tokens = CPU_PASS_OVERHEAD_TOKENS
        # Tokenisation runs on the torch thread; a rayon pool beside torch's threads would
        # oversubscribe the cores.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.tokenizer = Tokenizer.from_file(str(handler.file(pre["tokenizer"])))
        self.tokenizer.enable_truncation(max_length=self.max_tokens)
        self.tokenizer.enable_padding(pad_id=int(pre.get("pad_id", 0)), pad_token="[PAD]")

    def check(self, text: Any, where: str) -> str:
        if not isinstance(text, str):
            raise InvalidInput(f"{where}: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise InvalidInput(f"{where}: empty text")
        if len(text) > self.max_chars:
            raise InvalidInput(f"{where}: longer than {self.max_chars} characters")
        return text

    def from_json(self, instances: Sequence[Any]) -> list[str]:
        texts = [self.check(text, f"instance {i}") for i, text in enumerate(instances)]
        return self.within_budget(texts)

    def from_tensors(self, tensors: Mapping[str, np.ndarray]) -> list[str]:
        texts = tensors[self.input_name].reshape(-1)
        checked = [self.check(t, f"input {self.input_name!r}[{i}]") for i, t in enumerate(texts)]
        return self.within_budget(checked)

    def within_budget(self, texts: list[str]) -> list[str]:
        """The texts, unless they come to more than `max_request_tokens` once truncated.
        Counting means tokenising (a decode thread's work), so only when the texts could."""
        if len(texts) * self.max_tokens <= self.max_request_tokens:
            return texts
        tokens = sum(sum(e.attention_mask) for e in self.tokenizer.encode_batch(texts))
        if tokens > self.max_request_tokens:
            raise RequestTooCostly(
                f"the request's texts come to {tokens} tokens, more than this model's budget of"
                f" {self.max_request_tokens} per request"
            )
        return texts

    def preprocess(self, items: list[str]) -> Prepared:
        encodings = self.tokenizer.encode_batch(items)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
        counts = mask.sum(dim=1).tolist()
        truncated = [bool(e.overflowing) for e in encodings]
        return Prepared((ids, mask), context=(counts, truncated))

    def in_passes(self, items: list[str]) -> list[tuple[list[int], Prepared]]:
        """Texts sorted by length and cut into the passes that cost least: each pass pads its
        texts to its longest, and costs that many tokens plus `pass_overhead_tokens`; none
        holds more than TOKENS_PER_PASS padded tokens (a lone text may, up to `max_tokens`).

        A batch of sentences of one length stays one pass. One truncated paragraph among 63
        short sentences no longer costs 64 paragraphs (seconds on one core, past the request
        deadline), and texts of mixed lengths cost about their real tokens."""
        prepared = self.preprocess(items)
        ids, mask = prepared.inputs
        counts, truncated = prepared.context
        padding = len(items) * max(counts) - sum(counts)
        # The usual batch: one pass as tokenised, with no sort and no copy.
        if padding <= self.pass_overhead_tokens and len(items) * max(counts) <= TOKENS_PER_PASS:
            return [(list(range(len(items))), prepared)]
        cuts = cheapest_cuts(counts, budget=TOKENS_PER_PASS, overhead=self.pass_overhead_tokens)
        return [_pass(chunk, ids, mask, counts, truncated) for chunk in cuts]


def cheapest_cuts(counts: list[int], *, budget: int, overhead: int) -> list[list[int]]:
    """The positions of `counts` (token counts), in passes of neighbours in length order that
    minimise the sum of `overhead + texts x longest` over the passes, each within `budget`
    padded tokens unless it holds one text alone. Dynamic programming over the sorted counts:
    quadratic in the batch, 0.1-0.3 ms for 64 texts and 0.6-2.3 ms for 256 (measured)."""
    order = sorted(range(len(counts)), key=counts.__getitem__)
    lengths = [counts[i] for i in order]
    # cost[end]: the least cost of the first `end` texts in length order; start[end]: where the
    # last pass of that cheapest cut begins.
    cost = [0] * (len(order) + 1)
    start = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = lengths[end - 1]
        cost[end] = cost[end - 1] + overhead + longest  # the text alone
        start[end] = end - 1
        for begin in range(end - 2, -1, -1):
            texts = end - begin
            if texts * longest > budget:
                break
            joined = cost[begin] + overhead + texts * longest
            if joined <= cost[end]:  # on a tie, fewer passes
                cost[end], start[end] = joined, begin
    cuts: list[list[int]] = []
    end = len(order)
    while end:
        cuts.append(order[start[end] : end])
        end = start[end]
    return cuts[::-1]


class TextItems:
    """The item side of a text handler (texts in, tokenised on the torch thread), mixed in
    before the base class of its output side: `class H(TextItems, ClassifierHandler[str])`."""

    text: TextInputs
    # Counting a request's tokens can take a quarter of a second: not on the event loop.
    blocking_decode = True

    def instances_from_json(self, instances: Sequence[Any]) -> list[str]:
        return self.text.from_json(instances)

    def instances_from_tensors(self, tensors: Mapping[str, np.ndarray]) -> list[str]:
        return self.text.from_tensors(tensors)

    def instance_key(self, item: str) -> bytes:
        return item.encode("utf-8")

    def preprocess(self, items: list[str]) -> Prepared:
        return self.text.preprocess(items)

    def preprocess_in_passes(self, items: list[str]) -> list[tuple[list[int], Prepared]]:
        return self.text.in_passes(items)

    def place(self, device: torch.device) -> None:
        on_cpu = device.type == "cpu"
        self.text.pass_overhead_tokens = CPU_PASS_OVERHEAD_TOKENS if on_cpu else TOKENS_PER_PASS


def _pass(
    chunk: list[int],
    ids: torch.Tensor,
    mask: torch.Tensor,
    counts: list[int],
    truncated: list[bool],
) -> tuple[list[int], Prepared]:
    width = max(counts[i] for i in chunk)
    rows = torch.tensor(chunk)
    inputs = (ids[rows, :width], mask[rows, :width])
    context = ([counts[i] for i in chunk], [truncated[i] for i in chunk])
    return chunk, Prepared(inputs, context)
