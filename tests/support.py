"""Small helpers shared by tests."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.types import ASGIApp

from loomwork.agents.run_models import AgentRunRequest
from loomwork.config import Settings
from loomwork.messages import NewMessage, Role, TextPart
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, message_pb2, run_pb2
from server.runtime import Runtime
from server.transport.grpc_app import build_grpc_app
from server.transport.http import HttpServer
from server.worker import build_worker

ROOT = Path(__file__).resolve().parent.parent
# LOOMWORK_SECRET_KEY of the `loomwork server` / `loomwork worker` processes tests start.
TEST_SECRET_KEY = "loomwork-test-secret-key"


@asynccontextmanager
async def own_runtime(settings: Settings, **overrides: object) -> AsyncIterator[Runtime]:
    """A runtime of its own (another process's pools and clients) on a task queue no one
    else polls; `overrides` are Settings fields (e.g. model_timeout)."""
    own = await Runtime.open(
        settings.model_copy(update={"task_queue": unique("own-queue"), **overrides}),
        migrate=False,
    )
    try:
        yield own
    finally:
        await own.close()


class RunningWorker:
    """A worker of `runtime` (its task queue and client), started and stopped by a test."""

    def __init__(self, runtime: Runtime) -> None:
        self.worker = build_worker(runtime, identity=unique("test-worker"))
        self.task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        await self.worker.shutdown()
        await self.task


@asynccontextmanager
async def another_server(runtime: Runtime) -> AsyncIterator[grpc.aio.Channel]:
    """One more gRPC server over `runtime` (as another server process would be), and a
    channel to it; stopped on exit."""
    app = build_grpc_app(runtime, "127.0.0.1:0", health_interval=0.3)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield channel
    finally:
        await app.stop(grace=1.0)


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """`app` served as the HTTP endpoint serves its own (uvicorn, with its lifespan) on a
    free port: its base URL; stopped on exit."""
    server = HttpServer(app, "127.0.0.1:0")
    await server.start()
    try:
        yield f"http://{server.address}"
    finally:
        await server.stop()


def wait_serving(
    address: str,
    processes: Mapping[str, subprocess.Popen[bytes]],
    logs: Mapping[str, Path],
    timeout: float = 90,
) -> None:
    """Wait until the gRPC server at `address` reports SERVING; fail with the logs when one
    of `processes` (by role) exits first, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for role, process in processes.items():
            assert process.poll() is None, f"{role} exited: {logs[role].read_text()}"
        try:
            with grpc.insecure_channel(address) as channel:
                status = (
                    health_pb2_grpc.HealthStub(channel)
                    .Check(health_pb2.HealthCheckRequest(), timeout=2)
                    .status
                )
            if status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"nothing serves on {address}: {[p.read_text() for p in logs.values()]}")


def auth(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying a bearer token."""
    return (("authorization", f"Bearer {token}"),)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def agent_run_request(
    prompt: str, *, tenant: str = "alpha", thread_id: str = ""
) -> AgentRunRequest:
    """An `assistant` run's workflow input as the service makes it (announced), for calling
    agent steps directly; tenant "alpha" is the `token` fixture's."""
    return AgentRunRequest(
        tenant=tenant,
        run_id=unique("run"),
        agent_name="assistant",
        input_messages=[NewMessage(role=Role.USER, parts=[TextPart(text=prompt)])],
        thread_id=thread_id,
        announced=True,
        create_time=datetime.now(UTC),
    )


def field_violations(error: grpc.aio.AioRpcError) -> dict[str, str]:
    """{field: description} from the google.rpc.BadRequest details of a failed call."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, f"no rich status details on {error.code()}: {error.details()}"
    status = status_pb2.Status.FromString(raw)
    out: dict[str, str] = {}
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            out.update({v.field: v.description for v in bad.field_violations})
    return out


async def wait_agent_run_finished(
    agents: agent_pb2_grpc.AgentServiceStub, token: str, run_id: str
) -> agent_pb2.AgentRun:
    """Poll GetRun until the agent run has ended; the run."""
    running = (run_pb2.RUN_STATUS_PENDING, run_pb2.RUN_STATUS_RUNNING, run_pb2.RUN_STATUS_WAITING)
    for _ in range(600):
        run = (
            await agents.GetRun(
                agent_pb2.AgentServiceGetRunRequest(run_id=run_id), metadata=auth(token)
            )
        ).run
        if run.status not in running:
            return run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never finished")


async def replay_failure(workflow: type, workflow_id: str, history_json: str) -> Exception | None:
    """Replay a recorded history of `workflow` on the current code, in the strict sandbox
    the test workers use: why it failed (a non-determinism error, say), or None."""
    from temporalio.client import WorkflowHistory
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import Replayer

    from server.worker import workflow_runner

    replayer = Replayer(
        workflows=[workflow],
        data_converter=pydantic_data_converter,
        workflow_runner=workflow_runner("strict"),
    )
    history = WorkflowHistory.from_json(workflow_id, history_json)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    return result.replay_failure


async def collect_events(stream: AsyncIterable[Any]) -> list[Any]:
    """The events of a Watch/Stream/Answer response stream, read to its end."""
    return [response.event async for response in stream]


def message_text(message: message_pb2.Message) -> str:
    """The text parts of a message, joined."""
    return "".join(p.text.text for p in message.parts if p.HasField("text"))


def temporal_cli() -> str:
    """Path of the `temporal` CLI (on PATH, or installed beside this Python)."""
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    assert Path(found).exists()
    return found


async def signal_workflow(address: str, workflow_id: str, name: str, payload: str) -> None:
    """Send a workflow a signal with the `temporal` CLI, as an operator would."""
    proc = await asyncio.create_subprocess_exec(
        temporal_cli(),
        "workflow",
        "signal",
        "--address",
        address,
        "--workflow-id",
        workflow_id,
        "--name",
        name,
        "--input",
        payload,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()


async def generate_until_waiting(
    agents: agent_pb2_grpc.AgentServiceStub, token: str, run_id: str, tool_call_id: str
) -> agent_pb2.AgentRun:
    """Start the demo `assistant` with a scripted call that needs approval; Generate answers
    as soon as the run stops for it (WAITING, with that call pending)."""
    waiting = (
        await agents.Generate(
            agent_pb2.GenerateRequest(agent_name="assistant", prompt="mail", client_run_id=run_id),
            metadata=auth(token),
        )
    ).run
    assert waiting.status == run_pb2.RUN_STATUS_WAITING
    assert [p.tool_call_id for p in waiting.pending_approvals] == [tool_call_id]
    return waiting


def worker_process(
    embedded: Mapping[str, str], task_queue: str, log: Path, **env: str
) -> subprocess.Popen[bytes]:
    """`loomwork worker` as its own process polling `task_queue`, against the session's
    servers, its output appended to `log`; `env` adds environment variables."""
    return subprocess.Popen(
        [sys.executable, "-m", "server.cli", "worker"],
        cwd=ROOT,
        env=dict(
            os.environ,
            DATABASE_URL=embedded["DATABASE_URL"],
            REDIS_URL=embedded["REDIS_URL"],
            TEMPORAL_ADDRESS=embedded["TEMPORAL_ADDRESS"],
            LOOMWORK_TASK_QUEUE=task_queue,
            LOOMWORK_SECRET_KEY=TEST_SECRET_KEY,
            **env,
        ),
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


MetricSamples = list[tuple[str, dict[str, str], float]]


def metric_samples(text: str) -> MetricSamples:
    """The samples of a /metrics answer (Prometheus text), parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def metric_total(samples: MetricSamples, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    return sum(
        value
        for sample, have, value in samples
        if sample == name and labels.items() <= have.items()
    )
