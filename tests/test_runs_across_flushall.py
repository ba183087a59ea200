"""Runs outlive Redis losing everything: after FLUSHALL of the Valkey their server uses,
ingestions and answers are found (from their PostgreSQL records), canceled, and watched to
their terminal event, and a watcher of any run (an agent run too) resuming from its cursor
sees ids strictly increasing, none twice, and misses none of the events the log still has
(ids go on above a ceiling reserved in PostgreSQL).

A server and a worker of their own use a Valkey of their own: the session's is untouched."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from loomwork.config import Settings
from loomwork.testing import ScriptedModelServer, Turn
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, rag_pb2, rag_pb2_grpc, run_pb2
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from tests.rag_support import ANIMALS, create_index, ingest
from tests.support import RunningWorker, another_server, auth, own_runtime, unique

ANSWER = " ".join(f"word{i}" for i in range(120))  # ~6 s at 8 characters per 50 ms
WAIT = 120.0  # generous upper bound for "this finishes", never a timing assertion


@dataclass
class OwnRedisRag:
    runtime: Runtime
    rag: rag_pb2_grpc.RagServiceStub
    agents: agent_pb2_grpc.AgentServiceStub

    async def flushall(self) -> None:
        """Redis loses everything: run logs, caches, directories."""
        await self.runtime.redis.flushall()


@pytest.fixture
async def own(settings: Settings, runtime: Runtime, tmp_path: Path) -> AsyncIterator[OwnRedisRag]:
    valkey = EmbeddedStack(tmp_path / "valkey-home", postgres=False, temporal=False)
    endpoints = await asyncio.to_thread(valkey.start)
    try:
        async with own_runtime(settings, redis_url=endpoints.redis_url) as rt:
            worker = RunningWorker(rt)
            try:
                async with another_server(rt) as channel:
                    yield OwnRedisRag(
                        rt,
                        rag_pb2_grpc.RagServiceStub(channel),
                        agent_pb2_grpc.AgentServiceStub(channel),
                    )
            finally:
                await worker.stop()
    finally:
        await asyncio.to_thread(valkey.stop)


def increasing(ids: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(ids))


async def _index(own: OwnRedisRag, token: str) -> str:
    index = await create_index(own.rag, token)
    documents = [rag_pb2.DocumentInput(document_id=f"a{i}", text=t) for i, t in enumerate(ANIMALS)]
    await ingest(own.rag, token, index, documents)
    return index


async def _watch_answer(own: OwnRedisRag, token: str, answer_id: str, after: int) -> list:
    stream = own.rag.WatchAnswer(
        rag_pb2.WatchAnswerRequest(answer_id=answer_id, after_event_id=after),
        metadata=auth(token),
        timeout=WAIT,
    )
    return [r.event async for r in stream]


async def test_an_answer_streamed_across_flushall_ends_with_no_id_twice(
    own: OwnRedisRag, token, model_server: ScriptedModelServer
) -> None:
    index = await _index(own, token)
    model_server.push(Turn(text=ANSWER, chunk_size=8, chunk_delay=0.05))
    answer_id = unique("ans")
    stream = own.rag.Answer(
        rag_pb2.AnswerRequest(index_name=index, query="animals?", client_answer_id=answer_id),
        metadata=auth(token),
        timeout=WAIT,
    )
    seen: list[rag_pb2.AnswerEvent] = []
    cursor = 0
    async for response in stream:
        seen.append(response.event)
        if len([e for e in seen if e.HasField("text_delta")]) == 3 and not cursor:
            cursor = response.event.event_id
            await own.flushall()
            got = await own.rag.GetAnswer(
                rag_pb2.GetAnswerRequest(answer_id=answer_id), metadata=auth(token)
            )
            assert got.answer.status == run_pb2.RUN_STATUS_RUNNING  # lost mid-run
    ids = [e.event_id for e in seen]
    assert increasing(ids), ids
    assert seen[-1].HasField("finished")
    assert seen[-1].finished.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert seen[-1].finished.text == ANSWER

    resumed = await _watch_answer(own, token, answer_id, cursor)
    resumed_ids = [e.event_id for e in resumed]
    assert resumed_ids[0] > cursor and increasing(resumed_ids), resumed_ids
    assert resumed_ids[-1] == ids[-1]  # the same terminal event, under the same id
    assert resumed[-1].finished.text == ANSWER
    # Resuming from its cursor, a watcher misses none of the events the log still has.
    assert resumed == await _watch_answer(own, token, answer_id, 0)
    assert set(resumed_ids) <= set(ids)
    got = await own.rag.GetAnswer(
        rag_pb2.GetAnswerRequest(answer_id=answer_id), metadata=auth(token)
    )
    assert got.answer.status == run_pb2.RUN_STATUS_SUCCEEDED
    assert got.answer.last_event_id == ids[-1]


async def test_an_answer_is_found_and_canceled_after_flushall(
    own: OwnRedisRag, token, model_server: ScriptedModelServer
) -> None:
    index = await _index(own, token)
    model_server.push(Turn(text=ANSWER * 4, chunk_size=8, chunk_delay=0.05))
    answer_id = unique("ans")
    stream = own.rag.Answer(
        rag_pb2.AnswerRequest(index_name=index, query="animals?", client_answer_id=answer_id),
        metadata=auth(token),
        timeout=WAIT,
    )
    cursor = 0
    async for response in stream:
        if response.event.HasField("text_delta"):
            cursor = response.event.event_id
            break
    stream.cancel()
    await own.flushall()

    got = await own.rag.GetAnswer(
        rag_pb2.GetAnswerRequest(answer_id=answer_id), metadata=auth(token)
    )
    assert got.answer.status == run_pb2.RUN_STATUS_RUNNING
    await own.rag.CancelAnswer(
        rag_pb2.CancelAnswerRequest(answer_id=answer_id), metadata=auth(token)
    )
    events = await _watch_answer(own, token, answer_id, cursor)
    ids = [e.event_id for e in events]
    assert ids and ids[0] > cursor and increasing(ids), ids
    assert events == await _watch_answer(own, token, answer_id, 0)  # none missed
    assert events[-1].HasField("finished")
    assert events[-1].finished.status == run_pb2.RUN_STATUS_CANCELED


def _documents(count: int, paragraphs: int) -> list[rag_pb2.DocumentInput]:
    return [
        rag_pb2.DocumentInput(
            document_id=f"d{i}",
            text="\n\n".join(f"Document {i} paragraph {j} about tides." for j in range(paragraphs)),
        )
        for i in range(count)
    ]


async def _watch_ingestion(
    own: OwnRedisRag, token: str, ingestion_id: str, after: int
) -> list[rag_pb2.IngestionEvent]:
    stream = own.rag.WatchIngestion(
        rag_pb2.WatchIngestionRequest(ingestion_id=ingestion_id, after_event_id=after),
        metadata=auth(token),
        timeout=WAIT,
    )
    return [r.event async for r in stream]


async def test_an_ingestion_watched_across_flushall_ends_with_no_id_twice(
    own: OwnRedisRag, token
) -> None:
    index = await create_index(own.rag, token)
    started = await own.rag.IngestDocuments(
        rag_pb2.IngestDocumentsRequest(
            index_name=index,
            documents=_documents(12, 20),
            chunking=rag_pb2.ChunkingOptions(chunk_size=60),
        ),
        metadata=auth(token),
    )
    ingestion_id = started.ingestion.id
    seen: list[rag_pb2.IngestionEvent] = []
    cursor = 0
    async for response in own.rag.WatchIngestion(
        rag_pb2.WatchIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token), timeout=WAIT
    ):
        seen.append(response.event)
        if len(seen) == 2:
            cursor = response.event.event_id
            await own.flushall()
            got = await own.rag.GetIngestion(
                rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
            )
            assert got.ingestion.status == rag_pb2.INGESTION_STATUS_RUNNING  # lost mid-run
    ids = [e.event_id for e in seen]
    assert increasing(ids), ids
    assert seen[-1].HasField("finished")
    assert seen[-1].finished.status == rag_pb2.INGESTION_STATUS_SUCCEEDED
    assert len(seen[-1].finished.documents) == 12

    resumed = await _watch_ingestion(own, token, ingestion_id, cursor)
    resumed_ids = [e.event_id for e in resumed]
    assert resumed_ids[0] > cursor and increasing(resumed_ids), resumed_ids
    assert resumed_ids[-1] == ids[-1]
    assert resumed[-1].finished.status == rag_pb2.INGESTION_STATUS_SUCCEEDED
    # Resuming from its cursor, a watcher misses none of the events the log still has.
    assert resumed == await _watch_ingestion(own, token, ingestion_id, 0)
    assert set(resumed_ids) <= set(ids)


async def test_an_ingestion_is_found_and_canceled_after_flushall(own: OwnRedisRag, token) -> None:
    index = await create_index(own.rag, token)
    started = await own.rag.IngestDocuments(
        rag_pb2.IngestDocumentsRequest(
            index_name=index,
            documents=_documents(30, 40),
            chunking=rag_pb2.ChunkingOptions(chunk_size=60),
        ),
        metadata=auth(token),
    )
    ingestion_id = started.ingestion.id
    await own.flushall()

    got = await own.rag.GetIngestion(
        rag_pb2.GetIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
    )
    assert got.ingestion.id == ingestion_id
    assert got.ingestion.status in (
        rag_pb2.INGESTION_STATUS_PENDING,
        rag_pb2.INGESTION_STATUS_RUNNING,
    )
    canceled = await own.rag.CancelIngestion(
        rag_pb2.CancelIngestionRequest(ingestion_id=ingestion_id), metadata=auth(token)
    )
    assert canceled.ingestion.id == ingestion_id
    events = await _watch_ingestion(own, token, ingestion_id, 0)
    assert increasing([e.event_id for e in events])
    assert events[-1].HasField("finished")
    assert events[-1].finished.status == rag_pb2.INGESTION_STATUS_CANCELED


async def _watch_run(
    own: OwnRedisRag, token: str, run_id: str, after: int
) -> list[agent_pb2.AgentRunEvent]:
    stream = own.agents.WatchRun(
        agent_pb2.AgentServiceWatchRunRequest(run_id=run_id, after_event_id=after),
        metadata=auth(token),
        timeout=WAIT,
    )
    return [r.event async for r in stream]


async def test_an_agent_run_streamed_across_flushall_ends_with_no_id_twice(
    own: OwnRedisRag, token, model: ScriptedModelServer
) -> None:
    model.set_script([Turn(text=ANSWER, chunk_size=8, chunk_delay=0.05)])
    stream = own.agents.Stream(
        agent_pb2.StreamRequest(agent_name="assistant", prompt="count"),
        metadata=auth(token),
        timeout=WAIT,
    )
    seen: list[agent_pb2.AgentRunEvent] = []
    cursor = 0
    async for response in stream:
        seen.append(response.event)
        if len([e for e in seen if e.HasField("text_delta")]) == 3 and not cursor:
            cursor = response.event.event_id
            await own.flushall()
            got = await own.agents.GetRun(
                agent_pb2.AgentServiceGetRunRequest(run_id=response.event.run_id),
                metadata=auth(token),
            )
            assert got.run.status == run_pb2.RUN_STATUS_RUNNING  # lost mid-run
    ids = [e.event_id for e in seen]
    assert increasing(ids), ids
    assert seen[-1].HasField("run_finished")
    assert seen[-1].run_finished.output.text == ANSWER

    run_id = seen[0].run_id
    resumed = await _watch_run(own, token, run_id, cursor)
    resumed_ids = [e.event_id for e in resumed]
    assert resumed_ids[0] > cursor and increasing(resumed_ids), resumed_ids
    assert resumed_ids[-1] == ids[-1]
    assert resumed == await _watch_run(own, token, run_id, 0)
