"""Embedding providers: the real local ONNX model, and the real `openai` client against a
local OpenAI-compatible HTTP server started here (no Postgres, no Temporal needed)."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import loomwork
from loomwork.config import Settings
from loomwork.embeddings import (
    EmbeddingProvider,
    LocalMiniLM,
    OpenAIEmbeddings,
    embedding_provider,
    resolve_dimension,
)
from loomwork.embeddings.local import (
    MAX_SEQ_LENGTH,
    TOKENIZER_SHA256,
    default_model_path,
    default_tokenizer_path,
    verified_file,
)
from loomwork.errors import FailedPrecondition, InvalidArgument, Unavailable

SENTENCES = [
    "The cat sat on the mat",
    "A cat is sitting on a rug",
    "Quarterly revenue grew 5%",
    "Temporal retries failed activities with exponential backoff.",
    "pgvector stores embeddings in PostgreSQL",
]


def cosine(a: list[float], b: list[float]) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- local model ----------------------------------------------------------


@pytest.fixture(scope="module")
def local() -> LocalMiniLM:
    return LocalMiniLM()


async def test_local_dimension_unit_vectors_and_semantics(local: LocalMiniLM) -> None:
    provider: EmbeddingProvider = local
    assert await resolve_dimension(provider) == 384
    assert local.model == "all-MiniLM-L6-v2"
    assert local.dimension == 384
    vectors = await local.embed(SENTENCES[:3])
    assert len(vectors) == 3
    for vector in vectors:
        assert len(vector) == 384
        assert all(isinstance(x, float) for x in vector)
        assert math.isclose(float(np.linalg.norm(vector)), 1.0, abs_tol=1e-5)
    cat, rug, revenue = vectors
    assert cosine(cat, rug) > 0.5
    assert cosine(cat, rug) > cosine(cat, revenue) + 0.3
    assert cosine(cat, rug) > cosine(rug, revenue) + 0.3


async def test_local_order_preserved_across_batches(local: LocalMiniLM) -> None:
    one_batch = np.array(await LocalMiniLM(batch_size=5).embed(SENTENCES))
    small_batches = np.array(await LocalMiniLM(batch_size=2).embed(SENTENCES))
    assert one_batch.shape == (5, 384)
    np.testing.assert_allclose(small_batches, one_batch, atol=1e-5)
    singles = np.array([(await local.embed([s]))[0] for s in SENTENCES])
    np.testing.assert_allclose(singles, one_batch, atol=1e-5)
    reversed_vectors = np.array(await local.embed(SENTENCES[::-1]))
    np.testing.assert_allclose(reversed_vectors[::-1], one_batch, atol=1e-5)


async def test_local_does_not_block_the_event_loop(local: LocalMiniLM) -> None:
    await local.embed(["warm up"])
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    started = time.perf_counter()
    await local.embed([f"sentence number {i} about topic {i % 7}" for i in range(512)])
    elapsed = time.perf_counter() - started
    done.set()
    await task
    assert len(gaps) > 10
    assert max(gaps) < max(0.4, elapsed / 3), (max(gaps), elapsed)


async def test_local_empty_and_bad_input(local: LocalMiniLM) -> None:
    assert await local.embed([]) == []
    with pytest.raises(InvalidArgument) as bad:
        await local.embed(["fine", ""])
    assert bad.value.violations[0].field == "texts[1]"
    with pytest.raises(InvalidArgument):
        await local.embed(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument):
        await local.embed("not a list")  # type: ignore[arg-type]


async def test_local_long_text_is_truncated(local: LocalMiniLM) -> None:
    head = " ".join(f"word{i}" for i in range(400))
    long_a = head + " " + "apples " * 2000
    long_b = head + " " + "engines " * 2000
    vectors = await local.embed([long_a, long_b, "short"])
    assert len(vectors) == 3
    assert math.isclose(float(np.linalg.norm(vectors[0])), 1.0, abs_tol=1e-5)
    # Both texts differ only after the first 256 tokens: the model sees the same input.
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)


async def test_local_matches_raw_onnxruntime_reference(local: LocalMiniLM) -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    sentence = "Embeddings turn text into vectors for semantic search."
    tokenizer = Tokenizer.from_file(str(default_tokenizer_path()))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
    encoding = tokenizer.encode(sentence)
    ids = np.array([encoding.ids], dtype=np.int64)
    session = ort.InferenceSession(str(default_model_path()), providers=["CPUExecutionProvider"])
    (hidden,) = session.run(
        ["last_hidden_state"],
        {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.zeros_like(ids),
        },
    )
    reference = hidden[0].mean(axis=0)
    reference = reference / np.linalg.norm(reference)
    (vector,) = await local.embed([sentence])
    np.testing.assert_allclose(vector, reference, atol=1e-5)
    # Padded inside a batch with a longer text, the vector is the same.
    _, padded = await local.embed([sentence + " " + "more words " * 30, sentence])
    np.testing.assert_allclose(padded, reference, atol=1e-5)


def test_shipped_tokenizer_is_bert_uncased_wordpiece() -> None:
    from tokenizers import Tokenizer

    path = default_tokenizer_path()
    assert path.is_relative_to(Path(loomwork.__file__).parent)  # our package data, no SDK
    # bert-base-uncased's vocabulary: [CLS]=101, hello=7592, world=2088, [SEP]=102.
    assert Tokenizer.from_file(str(path)).encode("Hello world").ids[:4] == [101, 7592, 2088, 102]


def test_a_changed_model_or_tokenizer_file_is_refused(tmp_path: Path) -> None:
    tampered = tmp_path / "tokenizer.json"
    data = bytearray(default_tokenizer_path().read_bytes())
    data[-2] ^= 1
    tampered.write_bytes(bytes(data))
    with pytest.raises(FailedPrecondition, match="sha256"):
        verified_file(tampered, TOKENIZER_SHA256, "local embedding tokenizer")
    with pytest.raises(FailedPrecondition, match="missing"):
        verified_file(tmp_path / "absent.json", TOKENIZER_SHA256, "local embedding tokenizer")
    assert default_model_path().name == "model.onnx"  # the installed file passes its check


def test_factory_picks_the_provider() -> None:
    default = embedding_provider(Settings().embedding_model)
    assert isinstance(default, LocalMiniLM)
    assert embedding_provider("all-MiniLM-L6-v2") is default  # one session per process
    remote = embedding_provider(
        "text-embedding-3-small", base_url="http://127.0.0.1:1/v1", api_key="k"
    )
    assert isinstance(remote, OpenAIEmbeddings)
    assert remote.dimension == 1536


# -- OpenAI-compatible endpoint ---------------------------------------------

DIM = 6


def fake_vector(text: str) -> list[float]:
    """Deterministic and deliberately not unit length."""
    return [
        float(len(text)),
        float(sum(map(ord, text)) % 97),
        3.0,
        -1.0,
        0.5,
        float(text.count("a")),
    ]


class FakeEmbeddings:
    """State of the local endpoint: request log and a scripted status."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.floats_only = False  # like servers that ignore encoding_format
        self.lock = threading.Lock()


def make_handler(state: FakeEmbeddings) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            with state.lock:
                state.requests.append(
                    {"path": self.path, "body": body, "auth": self.headers.get("authorization")}
                )
                status = state.status
                floats_only = state.floats_only
            if self.path != "/v1/embeddings":
                self.reply(404, {"error": {"message": f"no route {self.path}"}})
                return
            if status != 200:
                messages = {
                    401: ("Incorrect API key provided", "invalid_request_error"),
                    500: ("The server had an error", "server_error"),
                }
                message, kind = messages.get(status, ("scripted failure", "error"))
                self.reply(status, {"error": {"message": message, "type": kind}})
                return
            data = []
            for index, text in enumerate(body["input"]):
                vector = fake_vector(text)
                if body.get("encoding_format") == "base64" and not floats_only:
                    raw = np.asarray(vector, dtype="<f4").tobytes()
                    embedding: Any = base64.b64encode(raw).decode()
                else:
                    embedding = vector
                data.append({"object": "embedding", "index": index, "embedding": embedding})
            data.reverse()  # servers may answer out of order; `index` decides
            self.reply(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": body["model"],
                    "usage": {"prompt_tokens": 1, "total_tokens": 1},
                },
            )

    return Handler


@pytest.fixture(scope="module")
def endpoint() -> Iterator[tuple[str, FakeEmbeddings]]:
    state = FakeEmbeddings()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def fake(endpoint: tuple[str, FakeEmbeddings]) -> FakeEmbeddings:
    _, state = endpoint
    with state.lock:
        state.requests.clear()
        state.status = 200
        state.floats_only = False
    return state


async def test_openai_vectors_normalised_in_order_and_batched(
    endpoint: tuple[str, FakeEmbeddings], fake: FakeEmbeddings
) -> None:
    base_url, _ = endpoint
    provider = OpenAIEmbeddings("fake-embed", base_url=base_url, api_key="sk-test", batch_size=2)
    with pytest.raises(FailedPrecondition):
        _ = provider.dimension  # unknown before the first answer
    texts = ["alpha", "banana", "cherry", "date", "elderberry"]
    vectors = await provider.embed(texts)
    assert provider.dimension == DIM
    assert len(vectors) == len(texts)
    for text, vector in zip(texts, vectors, strict=True):
        expected = np.asarray(fake_vector(text))
        np.testing.assert_allclose(vector, expected / np.linalg.norm(expected), atol=1e-6)
        assert math.isclose(float(np.linalg.norm(vector)), 1.0, abs_tol=1e-6)
    assert [r["body"]["input"] for r in fake.requests] == [
        ["alpha", "banana"],
        ["cherry", "date"],
        ["elderberry"],
    ]
    assert all(r["body"]["model"] == "fake-embed" for r in fake.requests)
    assert all(r["auth"] == "Bearer sk-test" for r in fake.requests)
    assert await provider.embed([]) == []
    assert len(fake.requests) == 3

    fake.floats_only = True
    again = await provider.embed(texts)
    np.testing.assert_allclose(again, vectors, atol=1e-6)

    fresh = OpenAIEmbeddings("fake-embed", base_url=base_url, api_key="k")
    assert await resolve_dimension(fresh) == DIM
    assert fake.requests[-1]["body"]["input"] == ["dimension probe"]
    await provider.close()
    await fresh.close()


async def test_openai_dimension_mismatch_and_bad_input(
    endpoint: tuple[str, FakeEmbeddings], fake: FakeEmbeddings
) -> None:
    base_url, _ = endpoint
    provider = OpenAIEmbeddings("fake-embed", dimension=8, base_url=base_url, api_key="k")
    with pytest.raises(FailedPrecondition, match="6-dim"):
        await provider.embed(["x"])
    with pytest.raises(InvalidArgument):
        await provider.embed(["ok", ""])
    assert len(fake.requests) == 1  # bad input never reaches the endpoint
    await provider.close()


async def test_openai_500_is_unavailable(
    endpoint: tuple[str, FakeEmbeddings], fake: FakeEmbeddings
) -> None:
    base_url, _ = endpoint
    fake.status = 500
    provider = OpenAIEmbeddings("fake-embed", base_url=base_url, api_key="k")
    with pytest.raises(Unavailable, match="500"):
        await provider.embed(["a"])
    assert len(fake.requests) == 1  # no client-side retries: Temporal retries
    fake.status = 429
    with pytest.raises(Unavailable, match="429"):
        await provider.embed(["a"])
    await provider.close()


async def test_openai_401_is_failed_precondition(
    endpoint: tuple[str, FakeEmbeddings], fake: FakeEmbeddings
) -> None:
    base_url, _ = endpoint
    fake.status = 401
    provider = OpenAIEmbeddings("fake-embed", base_url=base_url, api_key="wrong")
    with pytest.raises(FailedPrecondition, match="Incorrect API key provided"):
        await provider.embed(["a"])
    fake.status = 400
    with pytest.raises(InvalidArgument):
        await provider.embed(["a"])
    await provider.close()
    wrong_path = OpenAIEmbeddings("fake-embed", base_url=base_url + "/nope", api_key="k")
    fake.status = 200
    with pytest.raises(FailedPrecondition, match="404"):
        await wrong_path.embed(["a"])
    await wrong_path.close()


async def test_openai_refused_connection_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now: the connection is refused.
    provider = OpenAIEmbeddings("fake-embed", base_url=f"http://127.0.0.1:{port}/v1", api_key="k")
    with pytest.raises(Unavailable, match="unreachable"):
        await provider.embed(["a"])
    await provider.close()


def test_openai_without_key_or_endpoint_is_failed_precondition(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(FailedPrecondition, match="OPENAI_API_KEY"):
        OpenAIEmbeddings("text-embedding-3-small")
