"""Traces and logs of real `loomwork server` and `loomwork worker` processes with the
standard OTEL variables set, exporting to an OTLP receiver the test runs: one trace from
the caller's RPC (its W3C traceparent honoured) through the workflow and its activities to
the model and tool calls; a run that replays on another worker makes no span twice; JSON log
lines carry the run's tenant, id, workflow id and trace id."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx2
import pytest
import redis

from loomwork.testing import ScriptedModelServer, ScriptedToolCall, Turn
from loomwork.testing.script import Usage
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from tests.conftest import TOKENS, free_port
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from tests.processes import (
    loomwork_environment,
    loomwork_processes,
    start_loomwork,
    stop_loomwork,
)
from tests.support import auth, metric_samples, metric_total

TOKEN, TENANT = "t-alpha", "alpha"
RPC_SPAN = "loomwork.v1.AgentService/Generate"
SERVER_KIND, CLIENT_KIND = 2, 3  # OTLP's SpanKind numbers


@dataclass
class TracedStack:
    """A server and a worker (restartable) that trace to `receiver`."""

    address: str
    receiver: OtlpReceiver
    environment: dict[str, str]
    tmp: Path
    worker: subprocess.Popen[bytes]
    worker_log: Path
    worker_logs: list[Path]
    worker_http: str  # the worker's own HTTP endpoint: /healthz and /metrics

    def start_worker(self) -> None:
        self.worker_log = self.tmp / f"worker-{len(self.worker_logs) + 1}.log"
        self.worker_logs.append(self.worker_log)
        environment = {**self.environment, "LOOMWORK_HTTP_ADDRESS": self.worker_http}
        self.worker = start_loomwork(["worker"], environment, self.worker_log)
        for _ in range(450):  # polls 0.2 s apart: a generous bound, not a timing check
            if any("worker polling" in line.get("message", "") for line in self.log_lines()):
                break
            assert self.worker.poll() is None, self.worker_log.read_text()
            time.sleep(0.2)
        else:
            pytest.fail(f"the worker never polled:\n{self.worker_log.read_text()}")
        # Polling, and listed for the first steps the server routes to workers (it lists
        # itself a moment later: a run started before then begins its step the usual way).
        listing = f"loomwork:first-step-workers:{self.environment['LOOMWORK_TASK_QUEUE']}"
        with redis.Redis.from_url(self.environment["REDIS_URL"]) as client:
            for _ in range(1200):
                if client.zrangebyscore(listing, time.time(), "+inf"):
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"the worker was never listed:\n{self.worker_log.read_text()}")

    def restart_worker(self) -> None:
        stop_loomwork("worker", self.worker, self.worker_log)
        self.start_worker()

    def log_lines(self, *logs: Path) -> list[dict[str, Any]]:
        """The JSON lines of the workers' logs (the current one's by default)."""
        lines = []
        for log in logs or (self.worker_log,):
            for line in log.read_text().splitlines():
                if line.startswith("{"):  # stdout and stderr share the file
                    lines.append(json.loads(line))
        return lines

    def stub(self, channel: grpc.Channel) -> agent_pb2_grpc.AgentServiceStub:
        return agent_pb2_grpc.AgentServiceStub(channel)


@pytest.fixture(scope="module")
def traced(
    embedded: dict[str, str],
    model_server: ScriptedModelServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TracedStack]:
    tmp = tmp_path_factory.mktemp("traced")
    with otlp_receiver() as receiver:
        environment = loomwork_environment(
            embedded,
            tmp,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
            OTEL_SERVICE_NAME="loomwork-test",
            OTEL_BSP_SCHEDULE_DELAY="100",  # ms: spans reach the receiver soon
            OPENAI_BASE_URL=model_server.base_url,
            OPENAI_API_KEY="test-key",
            LOOMWORK_CHAT_MODEL="scripted",
            LOOMWORK_DEMO="true",
            LOOMWORK_TOKENS=TOKENS,
            LOOMWORK_METRICS_TENANT_LABEL="true",
        )
        with loomwork_processes(embedded, tmp, [["server"]], **environment) as (address, _):
            stack = TracedStack(
                address,
                receiver,
                environment,
                tmp,
                None,  # type: ignore[arg-type]
                tmp,
                [],
                f"127.0.0.1:{free_port()}",
            )
            stack.start_worker()
            try:
                yield stack
            finally:
                stop_loomwork("worker", stack.worker, stack.worker_log)


def traceparent() -> tuple[str, str, tuple[str, str]]:
    """A caller's trace id, span id and its W3C `traceparent` header."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, ("traceparent", f"00-{trace_id}-{span_id}-01")


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[str]:
    """The names of a span's parents, nearest first, as far as the trace has them."""
    by_id = {s.span_id: s for s in spans}
    names = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        names.append(span.name)
    return names


def test_one_trace_from_the_rpc_through_the_run_to_the_model(
    traced: TracedStack, model: ScriptedModelServer
) -> None:
    model.set_script(
        [
            Turn(tool_calls=[ScriptedToolCall("add", {"numbers": [2, 3]})], usage=Usage(11, 5)),
            Turn(text="The sum is 5.", usage=Usage(17, 2)),
        ]
    )
    trace_id, caller_span, header = traceparent()
    with grpc.insecure_channel(traced.address) as channel:
        agents = traced.stub(channel)
        run = agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="What is 2 + 3?"),
            metadata=(*auth(TOKEN), header),
            timeout=60,
        ).run
        assert run.status == run_pb2.RUN_STATUS_SUCCEEDED
        got = agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id=run.id), metadata=auth(TOKEN)
        ).run
        started = next(
            r.event.run_started
            for r in agents.WatchRun(
                agent_pb2.AgentServiceWatchRunRequest(run_id=run.id), metadata=auth(TOKEN)
            )
            if r.event.HasField("run_started")
        )
    # The caller's trace is the run's: on the run, GetRun and its run_started event.
    assert run.trace_id == got.trace_id == started.trace_id == trace_id

    spans = traced.receiver.wait_for(
        trace_id,
        lambda spans: (
            {RPC_SPAN, "RunActivity:agent_finish"} <= {s.name for s in spans}
            and sum(s.name == "chat scripted" for s in spans) == 2
        ),
    )
    # One trace: the server's span continues the caller's, every other span has its parent
    # in the trace.
    [rpc] = [s for s in spans if s.name == RPC_SPAN]
    assert rpc.parent_span_id == caller_span and rpc.kind == SERVER_KIND
    assert rpc.attributes["rpc.grpc.status_code"] == 0 and rpc.service == "loomwork-test"
    ids = {s.span_id for s in spans}
    assert all(s.parent_span_id in ids for s in spans if s is not rpc)
    # The model calls: the first one begun by the worker as the server started the run
    # (before the run's first activity existed, which took it over), under the RPC; the
    # second under its activity, under the workflow, under the RPC.
    chats = sorted(
        (s for s in spans if s.name == "chat scripted"),
        key=lambda s: s.attributes["gen_ai.usage.input_tokens"],
    )
    for chat, (input_tokens, output_tokens) in zip(chats, [(11, 5), (17, 2)], strict=True):
        assert chat.kind == CLIENT_KIND
        assert chat.attributes["gen_ai.operation.name"] == "chat"
        assert chat.attributes["gen_ai.request.model"] == "scripted"
        assert chat.attributes["gen_ai.usage.input_tokens"] == input_tokens
        assert chat.attributes["gen_ai.usage.output_tokens"] == output_tokens
    first, second = (ancestors(chat, spans) for chat in chats)
    assert first == [RPC_SPAN]
    assert second == [
        "RunActivity:agent_model_step",
        "StartActivity:agent_model_step",  # the workflow's
        "StartWorkflow:AgentRun",
        RPC_SPAN,
    ]
    [first_activity] = [s for s in spans if s.name == "RunActivity:agent_start_and_step"]
    assert ancestors(first_activity, spans)[1:] == ["StartWorkflow:AgentRun", RPC_SPAN]
    [workflow] = [s for s in spans if s.name == "RunWorkflow:AgentRun"]
    assert ancestors(workflow, spans) == ["StartWorkflow:AgentRun", RPC_SPAN]
    [tool] = [s for s in spans if s.name == "execute_tool add"]
    assert tool.attributes["gen_ai.tool.name"] == "add"
    assert ancestors(tool, spans)[0] == "RunActivity:agent_tool_call"

    # Every line logged inside the run carries its tenant, run id, workflow id and trace id.
    lines = [line for line in traced.log_lines() if line.get("run_id") == run.id]
    messages = {line["message"] for line in lines}
    assert {f"agent run {run.id} started", f"agent run {run.id} ended: succeeded"} <= messages
    for line in lines:
        assert line["tenant"] == TENANT
        assert line["workflow_id"] == run.temporal_workflow_id
        assert line["trace_id"] == trace_id

    # The worker serves its own /metrics: its runs and tool calls, by tenant as asked.
    samples = metric_samples(httpx2.get(f"http://{traced.worker_http}/metrics").text)
    ended = {"kind": "agent", "status": "succeeded", "tenant": TENANT}
    assert metric_total(samples, "loomwork_runs_started_total", kind="agent", tenant=TENANT) >= 1
    assert metric_total(samples, "loomwork_runs_ended_total", **ended) >= 1
    assert metric_total(samples, "loomwork_tool_calls_total", tool="add", tenant=TENANT) >= 1


def test_a_run_replayed_on_another_worker_makes_no_span_twice(
    traced: TracedStack, model: ScriptedModelServer
) -> None:
    email = {"to": "ada@example.com", "subject": "Hi", "body": "Hello"}
    model.set_script([Turn(tool_calls=[ScriptedToolCall("send_email", email)]), Turn(text="Sent.")])
    trace_id, _, header = traceparent()
    with grpc.insecure_channel(traced.address) as channel:
        agents = traced.stub(channel)
        run = agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="Email Ada"),
            metadata=(*auth(TOKEN), header),
            timeout=60,
        ).run
        assert run.status == run_pb2.RUN_STATUS_WAITING
        first_log = traced.worker_log
        # The run waits for a person; its worker stops, and another one takes it over:
        # that one replays the run's history before it goes on.
        traced.restart_worker()
        [pending] = run.pending_approvals
        agents.ResumeRun(
            agent_pb2.AgentServiceResumeRunRequest(
                run_id=run.id,
                decisions=[
                    agent_pb2.ApprovalDecision(
                        tool_call_id=pending.tool_call_id, approve=agent_pb2.ToolCallApproval()
                    )
                ],
            ),
            metadata=auth(TOKEN),
            timeout=60,
        )
        for _ in range(600):
            done = agents.GetRun(
                agent_pb2.AgentServiceGetRunRequest(run_id=run.id), metadata=auth(TOKEN)
            ).run
            if done.status == run_pb2.RUN_STATUS_SUCCEEDED:
                break
            time.sleep(0.1)
        assert done.status == run_pb2.RUN_STATUS_SUCCEEDED

    traced.receiver.wait_for(
        trace_id, lambda spans: "RunActivity:agent_finish" in {s.name for s in spans}
    )
    time.sleep(0.5)  # a duplicate would come in the same batches: give them time
    counts = Counter(s.name for s in traced.receiver.of_trace(trace_id))
    for name in (
        "RunWorkflow:AgentRun",
        "StartActivity:agent_start_and_step",
        "RunActivity:agent_start_and_step",
        "StartActivity:agent_tool_call",
        "execute_tool send_email",
        "RunActivity:agent_finish",
        "CompleteWorkflow:AgentRun",
    ):
        assert counts[name] == 1, (name, counts)
    assert counts["chat scripted"] == 2, counts
    # The run started on the first worker and ended on the second.
    assert f"agent run {run.id} started" in {m["message"] for m in traced.log_lines(first_log)}
    ended = [
        m for m in traced.log_lines() if m["message"] == f"agent run {run.id} ended: succeeded"
    ]
    assert len(ended) == 1 and ended[0]["trace_id"] == trace_id
    assert not any(
        m["message"].endswith("started") and m.get("run_id") == run.id for m in traced.log_lines()
    )
