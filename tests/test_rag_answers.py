"""RagService answers end to end: streamed with citations from the scripted model, retried
saying why, started again by a repeat, finished once, and watched after their events
expired."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest

from loomwork.testing import Failure, ScriptedModelServer, Turn
from protos.loomwork.v1 import rag_pb2, run_pb2
from tests.rag_support import ANIMALS, create_index, ingest
from tests.support import auth, collect_events, unique


async def test_answer_streams_with_citations(rag, token, model_server: ScriptedModelServer) -> None:
    index = await create_index(rag, token)
    await ingest(
        rag,
        token,
        index,
        [rag_pb2.DocumentInput(document_id=f"a{i}", text=t) for i, t in enumerate(ANIMALS)],
    )
    model_server.push(Turn(text="Dolphins live in the sea [1]. Bees make honey [2]."))
    events = [
        r.event
        async for r in rag.Answer(
            rag_pb2.AnswerRequest(
                index_name=index,
                query="Which animal lives in the sea?",
                retrieval=rag_pb2.RetrievalOptions(top_k=2),
                client_answer_id=unique("ans"),
            ),
            metadata=auth(token),
        )
    ]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "started" and kinds[1] == "retrieval" and kinds[-1] == "finished"
    assert [e.event_id for e in events] == list(range(1, len(events) + 1))
    text = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
    assert text == "Dolphins live in the sea [1]. Bees make honey [2]."
    retrieval = events[1].retrieval
    citations = [e.citation for e in events if e.HasField("citation")]
    assert [c.number for c in citations] == [1, 2]
    assert citations[0].chunk_id == retrieval.chunks[0].chunk.id
    assert retrieval.chunks[0].chunk.document_id == "a1"
    final = events[-1].finished
    assert final.status == run_pb2.RUN_STATUS_SUCCEEDED and final.text == text
    # The model saw the numbered context.
    system = model_server.requests[-1].messages[0]["content"]
    assert "[1]" in system and "Dolphins" in system

    got = await rag.GetAnswer(rag_pb2.GetAnswerRequest(answer_id=final.id), metadata=auth(token))
    assert got.answer.text == text and got.answer.last_event_id == events[-1].event_id
    replay = [
        r.event.event_id
        async for r in rag.WatchAnswer(
            rag_pb2.WatchAnswerRequest(answer_id=final.id, after_event_id=2), metadata=auth(token)
        )
    ]
    assert replay == [e.event_id for e in events[2:]]
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await rag.CancelAnswer(
            rag_pb2.CancelAnswerRequest(answer_id=final.id), metadata=auth(token)
        )
    assert ended.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_retried_answer_says_what_failed_and_when_it_tries_again(
    rag, token, model: ScriptedModelServer
) -> None:
    index = await create_index(rag, token)
    await ingest(rag, token, index, [rag_pb2.DocumentInput(document_id="a0", text=ANIMALS[0])])
    model.set_script(
        [Failure(status=429, message="slow down", retry_after=0.3), Turn(text="Bees [1].")]
    )
    events = await collect_events(
        rag.Answer(
            rag_pb2.AnswerRequest(index_name=index, query="Who makes honey?"), metadata=auth(token)
        )
    )
    [retrying] = [e.retrying for e in events if e.HasField("retrying")]
    assert retrying.attempt == 2
    assert (retrying.error.code, retrying.error.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        "MODEL_RATE_LIMITED",
    )
    assert "slow down" in retrying.error.message
    assert retrying.backoff.ToTimedelta() == timedelta(seconds=0.3)  # the model's Retry-After
    assert events[-1].finished.text == "Bees [1]."


async def test_answer_whose_first_start_failed_is_started_by_the_repeat(
    rag, token, model_server: ScriptedModelServer, runtime
) -> None:
    """The first call stored the answer, then failed to start its run: the repeat (same
    client_answer_id) starts it instead of following a log no run will ever write."""
    from loomwork.rag.answer import AnswerRecord
    from server.servicers.rag_answers import answer_workflow_id

    index = await create_index(rag, token)
    await ingest(rag, token, index, [rag_pb2.DocumentInput(document_id="a1", text=ANIMALS[1])])
    answer_id = unique("ans")
    query = "Which animal lives in the sea?"
    await runtime.rag.answers.create(
        "alpha",
        AnswerRecord(
            id=answer_id,
            index_name=index,
            query=query,
            model="scripted",
            workflow_id=answer_workflow_id(index, "alpha", answer_id),
        ),
    )
    model_server.push(Turn(text="Dolphins [1]."))
    request = rag_pb2.AnswerRequest(index_name=index, query=query, client_answer_id=answer_id)
    events = await asyncio.wait_for(collect_events(rag.Answer(request, metadata=auth(token))), 60)
    assert events[-1].HasField("finished")
    assert events[-1].finished.text == "Dolphins [1]."


async def test_finish_retried_after_its_status_was_saved_still_ends_the_log(
    rag, token, model_server: ScriptedModelServer, runtime
) -> None:
    """An ingestion's or an answer's finish retried after it saved the final status but
    before its terminal event was published (the worker gone, Redis refused): the retry
    publishes it, so the streams that follow the log end, and records its id."""
    from loomwork.rag.answer import AnswerRequest, answer_log_key
    from loomwork.rag.ingestion_models import IngestionRequest, ingestion_log_key

    index = await create_index(rag, token)
    done = await ingest(rag, token, index, [rag_pb2.DocumentInput(document_id="a1", text="x")])
    model_server.push(Turn(text="Fine."))
    answered = [
        r.event
        async for r in rag.Answer(
            rag_pb2.AnswerRequest(index_name=index, query="q?", client_answer_id=unique("ans")),
            metadata=auth(token),
        )
    ]
    answer_id = answered[-1].finished.id
    ingested = await rag.GetIngestion(
        rag_pb2.GetIngestionRequest(ingestion_id=done.id), metadata=auth(token)
    )
    ingestion_ids_seen = ingested.ingestion.last_event_id
    answer_ids_seen = answered[-1].event_id
    ingestion_key = ingestion_log_key("alpha", done.id)
    answer_key = answer_log_key("alpha", answer_id)
    async with runtime.db.connection() as conn:
        for table, row_id in (("rag_ingestions", done.id), ("rag_answers", answer_id)):
            await conn.execute(
                f"update {table} set record = jsonb_set(record, '{{terminal_event_id}}', '0')"
                " where tenant_id = 'alpha' and id = %s",
                (row_id,),
            )
    for key in (ingestion_key, answer_key):
        await runtime.redis.delete(runtime.events.meta_key(key), runtime.events.stream_key(key))

    ingestion = await runtime.rag.ingestion.finish(
        IngestionRequest(tenant="alpha", ingestion_id=done.id, index_name=index, document_count=1)
    )
    # Its log is gone: the terminal event goes above every id its watchers saw.
    assert ingestion.status == "succeeded"
    assert ingestion.terminal_event_id > ingestion_ids_seen >= 1
    assert await runtime.events.is_finished(ingestion_key)
    answer = await runtime.rag.answers.finish(
        AnswerRequest(tenant="alpha", answer_id=answer_id, index_name=index, query="q?"),
        None,
        "succeeded",
    )
    assert answer.status == "succeeded" and answer.terminal_event_id > answer_ids_seen
    assert await runtime.events.is_finished(answer_key)
    stored = await runtime.rag.answers.get("alpha", answer_id)
    assert stored.terminal_event_id == answer.terminal_event_id


async def test_watch_answer_after_events_expired_sends_the_terminal_event(
    rag, token, runtime, model_server: ScriptedModelServer
) -> None:
    from loomwork.rag.answer import answer_log_key

    index = await create_index(rag, token)
    await ingest(rag, token, index, [rag_pb2.DocumentInput(document_id="d", text=ANIMALS[1])])
    model_server.push(Turn(text="Dolphins live in the sea [1]."))
    answer_id = unique("ans")
    events = [
        r.event
        async for r in rag.Answer(
            rag_pb2.AnswerRequest(index_name=index, query="sea?", client_answer_id=answer_id),
            metadata=auth(token),
        )
    ]
    terminal = events[-1]
    assert terminal.HasField("finished")
    # Events expire long after the answer's run ended (its record notes the terminal id once
    # the terminal event is out, a moment after the stream saw it).
    started = await rag.GetAnswer(
        rag_pb2.GetAnswerRequest(answer_id=answer_id), metadata=auth(token)
    )
    await runtime.temporal.get_workflow_handle(started.answer.temporal_workflow_id).result()
    key = answer_log_key("alpha", answer_id)
    await runtime.redis.delete(runtime.events.meta_key(key), runtime.events.stream_key(key))

    async def watch(after: int) -> list[rag_pb2.AnswerEvent]:
        stream = rag.WatchAnswer(
            rag_pb2.WatchAnswerRequest(answer_id=answer_id, after_event_id=after),
            metadata=auth(token),
        )
        return [r.event async for r in stream]

    rebuilt = await asyncio.wait_for(watch(0), 30)
    assert [e.event_id for e in rebuilt] == [terminal.event_id]
    assert rebuilt[0].finished.text == "Dolphins live in the sea [1]."
    assert await asyncio.wait_for(watch(terminal.event_id), 30) == []
    got = await rag.GetAnswer(rag_pb2.GetAnswerRequest(answer_id=answer_id), metadata=auth(token))
    assert got.answer.last_event_id == terminal.event_id
