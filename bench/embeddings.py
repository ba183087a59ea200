"""Embedding throughput: `LocalMiniLM.embed` over the raw ONNX session doing the same work.

Both embed the same ~1000 short sentences in batches of 64 in this process,
alternating, several repetitions; the raw side is the floor: the tokenizer
(padding to the longest in each batch), `session.run`, mean pooling and L2
norm in numpy, called synchronously, no event loop, no threads. The ratio is
what `LocalMiniLM` keeps of it (goal >= 0.8x). `LocalMiniLM` also batches
texts of similar token length together; "raw, len-sorted" does that too, so
the second ratio is the pure overhead (event loop, thread hops, list output).

    .venv/bin/python bench/embeddings.py [--sentences 1000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loomwork.embeddings.local import (
    MAX_SEQ_LENGTH,
    LocalMiniLM,
    default_model_path,
    default_tokenizer_path,
)

SUBJECTS = ["The cat", "A customer", "Our team", "The server", "My neighbour", "The new model"]
VERBS = ["reported", "noticed", "shipped", "fixed", "asked about", "measured"]
OBJECTS = [
    "the quarterly revenue",
    "a slow database query",
    "the login page",
    "an unexpected invoice",
    "the weather in Lisbon",
    "latency on the checkout path",
]
TAILS = ["", " yesterday", " after the release", " twice this week", " during the demo"]


def sentences(count: int) -> list[str]:
    rng = random.Random(7)
    return [
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}{rng.choice(TAILS)}."
        for _ in range(count)
    ]


class Raw:
    """The same model, tokenizer and pooling, straight on onnxruntime."""

    def __init__(self, batch_size: int) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(default_tokenizer_path()))
        self.tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in a batch
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(default_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            encodings = self.tokenizer.encode_batch(texts[start : start + self.batch_size])
            out.append(self._run(encodings))
        return np.concatenate(out)

    def embed_sorted(self, texts: list[str]) -> np.ndarray:
        """Like `LocalMiniLM`: batches of similar token length (less padding), input order kept."""
        self.tokenizer.no_padding()
        lengths = [len(e.ids) for e in self.tokenizer.encode_batch(texts)]
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        out = np.empty((len(texts), 384), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            out[chunk] = self._run(self.tokenizer.encode_batch([texts[i] for i in chunk]))
        return out

    def _run(self, encodings: list[Any]) -> np.ndarray:
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        (hidden,) = self.session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
        )
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        normalised: np.ndarray = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return normalised


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    texts = sentences(args.sentences)
    raw = Raw(args.batch_size)
    local = LocalMiniLM(batch_size=args.batch_size)

    # Warm-up (session creation, first-run allocations) and a correctness check.
    reference = raw.embed(texts[:128])
    ours = np.asarray(await local.embed(texts[:128]))
    max_diff = float(np.abs(reference - ours).max())

    sorted_diff = float(np.abs(raw.embed_sorted(texts[:128]) - reference).max())

    raw_rates: list[float] = []
    sorted_rates: list[float] = []
    local_rates: list[float] = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        raw.embed(texts)
        raw_rates.append(len(texts) / (time.perf_counter() - started))
        started = time.perf_counter()
        raw.embed_sorted(texts)
        sorted_rates.append(len(texts) / (time.perf_counter() - started))
        started = time.perf_counter()
        await local.embed(texts)
        local_rates.append(len(texts) / (time.perf_counter() - started))

    raw_rate, local_rate = statistics.median(raw_rates), statistics.median(local_rates)
    sorted_rate = statistics.median(sorted_rates)
    print(
        f"{len(texts)} sentences, batch {args.batch_size}, {args.repeats} repeats, "
        f"{os.cpu_count()} CPUs, intra-op threads {local.intra_op_threads}"
    )
    print(f"max |raw - LocalMiniLM| on 128 vectors: {max_diff:.2e} (sorted raw: {sorted_diff:.2e})")
    print(f"raw onnxruntime : {raw_rate:8.1f} sentences/s (median; runs {_fmt(raw_rates)})")
    print(f"raw, len-sorted : {sorted_rate:8.1f} sentences/s (median; runs {_fmt(sorted_rates)})")
    print(f"LocalMiniLM     : {local_rate:8.1f} sentences/s (median; runs {_fmt(local_rates)})")
    print(f"ratio over raw            : {local_rate / raw_rate:.2f}x (goal >= 0.8x)")
    print(f"ratio over raw len-sorted : {local_rate / sorted_rate:.2f}x (overhead alone)")


def _fmt(rates: list[float]) -> str:
    return ", ".join(f"{r:.0f}" for r in rates)


if __name__ == "__main__":
    asyncio.run(main())
