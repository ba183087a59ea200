"""Every method of every service the server offers, fuzzed with requests built from the
message descriptors (tests/fuzz_strategies.py): no call may answer INTERNAL or UNKNOWN;
afterwards the server is healthy and what another tenant stored before is unchanged.

The methods come from the server's reflection, so a new RPC is fuzzed without editing this
file. LOOMWORK_FUZZ_EXAMPLES sets the examples per method (default 6: a few hundred in all,
derandomized so that CI sees the same ones every run); a longer run:
`LOOMWORK_FUZZ_EXAMPLES=100 .venv/bin/python -m pytest tests/test_fuzz.py -q -s`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loomwork.testing import ScriptedModelServer
from protos.loomwork.v1 import (
    agent_pb2,
    integration_pb2,
    memory_pb2,
    rag_pb2,
    usage_pb2,
    workflow_pb2,
)
from tests.fuzz_seeds import Stubs, other_tenant_reads, seed_runs, seed_stored
from tests.fuzz_strategies import MessageStrategies
from tests.support import auth

EXAMPLES = int(os.environ.get("LOOMWORK_FUZZ_EXAMPLES", "6"))
CALL_TIMEOUT = 3.0  # seconds; DEADLINE_EXCEEDED is a clean answer
STREAM_READS = 3  # responses read from a server stream
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
IGNORED_SERVICES = ("grpc.health.", "grpc.reflection.")
STATUSES: Counter[str] = Counter()  # (method, status) of every call, for the summary


async def _served_methods(channel: grpc.aio.Channel) -> list[MethodDescriptor]:
    """Every method of every service the server lists through reflection."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: list[str] = []
    async for response in stub.ServerReflectionInfo(ask()):
        names = [s.name for s in response.list_services_response.service]
        break
    pool = descriptor_pool.Default()
    return [
        method
        for name in sorted(names)
        if not name.startswith(IGNORED_SERVICES)
        for method in pool.FindServiceByName(name).methods
    ]


def _all_methods() -> list[MethodDescriptor]:
    """The methods of the protos' services, known at collection time (the session's server
    serves them; `test_every_served_method_is_fuzzed` checks that against reflection).
    Those that delete or cancel come last, so that the others find the seeded data."""
    files = (agent_pb2, integration_pb2, memory_pb2, rag_pb2, workflow_pb2, usage_pb2)
    methods = [
        method
        for module in files
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]
    return sorted(methods, key=lambda m: m.name.startswith(("Delete", "Cancel")))


METHODS = _all_methods()


@dataclass
class Seeded:
    """What both tenants stored before fuzzing: ids by kind for the fuzzer to try, and the
    other tenant's data as read back, to compare afterwards."""

    pools: dict[str, list[str]]
    examples: dict[str, list[Message]]  # valid requests the seeding sent, by type name
    other_ids: dict[str, str]
    other_reads: dict[str, bytes]
    strategies: dict[str, st.SearchStrategy[Any]] = field(default_factory=dict)

    def requests(self, method: MethodDescriptor) -> st.SearchStrategy[Any]:
        """The method's requests: one message, or a list of them for a client stream."""
        if method.full_name not in self.strategies:
            messages = MessageStrategies(self.pools).for_request(
                method.input_type, self.examples.get(method.input_type.full_name, [])
            )
            if method.client_streaming:
                messages = st.lists(messages, min_size=1, max_size=3)
            self.strategies[method.full_name] = messages
        return self.strategies[method.full_name]


class _Recorder(grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor):
    """Keeps every request sent through its channel, by message type."""

    def __init__(self) -> None:
        self.requests: dict[str, list[Message]] = defaultdict(list)

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        self.requests[request.DESCRIPTOR.full_name].append(request)
        return await continuation(client_call_details, request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        self.requests[request.DESCRIPTOR.full_name].append(request)
        return await continuation(client_call_details, request)


# Kinds of fields that name another kind's ids (tests/fuzz_strategies.field_kind).
_ALIASES = {"clientrun": "run", "collection": "index", "workflowname": "workflow"}


@pytest.fixture(scope="module")
async def seeded(
    grpc_address: str, token: str, other_token: str, model_server: ScriptedModelServer
) -> AsyncIterator[Seeded]:
    recorder = _Recorder()
    try:
        async with grpc.aio.insecure_channel(grpc_address, interceptors=[recorder]) as channel:
            stubs = Stubs(channel)
            mine = await seed_stored(stubs, token)
            others = await seed_stored(stubs, other_token)
            pairs = [*mine.items(), *others.items()]
            pairs += await seed_runs(stubs, token, model_server, mine["index"])
            md = auth(token)
            workflows = await stubs.workflows.ListWorkflows(
                workflow_pb2.ListWorkflowsRequest(), metadata=md
            )
            tools = await stubs.agents.ListTools(agent_pb2.ListToolsRequest(), metadata=md)
            pairs += [("workflow", w.id) for w in workflows.workflows]
            pairs += [("tool", t.name) for t in tools.tools]
            pairs.append(("agent", "assistant"))
            reads = await other_tenant_reads(stubs, other_token, others)
        pools: dict[str, list[str]] = defaultdict(list)
        for kind, value in pairs:
            pools[kind].append(value)
        for alias, kind in _ALIASES.items():
            pools[alias] = pools[kind]
        yield Seeded(
            pools=dict(pools),
            examples=dict(recorder.requests),
            other_ids=others,
            other_reads=reads,
        )
    finally:
        model_server.set_script(None)  # back to echo, as the session began


async def _call(channel: grpc.aio.Channel, method: MethodDescriptor, requests, token: str) -> str:
    """Make the call with `requests` (one, or a list for a client stream): its status."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    serializer = lambda m: m.SerializeToString()  # noqa: E731
    deserializer = GetMessageClass(method.output_type).FromString
    md = auth(token)
    try:
        if method.client_streaming:
            call = channel.stream_unary(path, serializer, deserializer)

            async def stream() -> AsyncIterator[Message]:
                for request in requests:
                    yield request

            await call(stream(), metadata=md, timeout=CALL_TIMEOUT)
        elif method.server_streaming:
            responses = channel.unary_stream(path, serializer, deserializer)(
                requests, metadata=md, timeout=CALL_TIMEOUT
            )
            read = 0
            async for _ in responses:
                read += 1
                if read >= STREAM_READS:
                    responses.cancel()
                    break
        else:
            await channel.unary_unary(path, serializer, deserializer)(
                requests, metadata=md, timeout=CALL_TIMEOUT
            )
    except grpc.aio.AioRpcError as error:
        assert error.code() not in BAD_CODES, (
            f"{method.full_name} answered {error.code().name}: {error.details()}\n"
            f"request: {requests}"
        )
        return error.code().name
    return "OK"


@pytest.mark.parametrize("method", METHODS, ids=[m.full_name for m in METHODS])
@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(data=st.data())
async def test_fuzzed_requests_get_a_clean_status(
    method: MethodDescriptor,
    channel: grpc.aio.Channel,
    token: str,
    seeded: Seeded,
    data: st.DataObject,
) -> None:
    requests = data.draw(seeded.requests(method), label="requests")
    STATUSES[f"{method.full_name} {await _call(channel, method, requests, token)}"] += 1


async def test_every_served_method_is_fuzzed(channel: grpc.aio.Channel) -> None:
    served = {m.full_name for m in await _served_methods(channel)}
    assert served == {m.full_name for m in METHODS}


async def test_after_fuzzing_the_server_is_healthy_and_the_other_tenant_unchanged(
    channel: grpc.aio.Channel, other_token: str, seeded: Seeded
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + 10
    while True:
        status = (await health.Check(health_pb2.HealthCheckRequest(), timeout=5)).status
        if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.3)
    assert status == health_pb2.HealthCheckResponse.SERVING
    reads = await other_tenant_reads(Stubs(channel), other_token, seeded.other_ids)
    assert reads == seeded.other_reads
    if STATUSES:
        print("\nfuzz statuses:", sum(STATUSES.values()), "calls")
        for key, count in sorted(STATUSES.items()):
            print(f"  {key}: {count}")
