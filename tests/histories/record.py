"""Record an AgentRun history for the replay tests, from the code checked out here.

    .venv/bin/python tests/histories/record.py tests/histories/agent_run_<version>.json

One run through the gRPC API on a fresh embedded stack: a tool call, a call that needs
approval (approved by ResumeRun), then the answer. Record one per released version of the
workflow code and keep them all: `test_agent_run_replay.py` replays every recorded history
against the current code, so a change that would break runs already under way fails there
(guard such a change with `workflow.patched`). An older version is recorded by running this
file from a `git worktree` of that commit.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from loomwork.config import Settings
from loomwork.llm.scripted_server import ScriptedModelServer, ScriptedToolCall, Turn
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, run_pb2
from server.app import build_grpc_app
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.worker import build_worker

AUTH = (("authorization", "Bearer rec"),)
SCRIPT = [
    Turn(tool_calls=[ScriptedToolCall("add", {"numbers": [2, 3]}, id="c_add")]),
    Turn(tool_calls=[ScriptedToolCall("send_email", {"to": "ada@example.com"}, id="c_mail")]),
    Turn(text="Sent: 5.", chunk_size=3),
]


async def record(settings: Settings) -> str:
    """The run's history as JSON."""
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    worker = build_worker(runtime)
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    async with worker, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        request = agent_pb2.StreamRequest(
            agent_name="assistant", prompt="add 2 and 3, then mail Ada", client_run_id="replay"
        )
        async for response in agents.Stream(request, metadata=AUTH):
            if response.event.HasField("approval_requested"):
                break
        await agents.ResumeRun(
            agent_pb2.AgentServiceResumeRunRequest(
                run_id="replay",
                decisions=[agent_pb2.ApprovalDecision(tool_call_id="c_mail", approve={})],
            ),
            metadata=AUTH,
        )
        watch = agent_pb2.AgentServiceWatchRunRequest(run_id="replay")
        async for response in agents.WatchRun(watch, metadata=AUTH):
            if response.event.HasField("run_finished"):
                assert response.event.run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED
        run = await agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id="replay"), metadata=AUTH
        )
        handle = runtime.temporal.get_workflow_handle(run.run.temporal_workflow_id)
        history = (await handle.fetch_history()).to_json()
    await app.stop(0)
    await runtime.close()
    return history


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    with tempfile.TemporaryDirectory(prefix="loomwork-history-") as tmp:
        stack = EmbeddedStack(Path(tmp), temporal_ui=False)
        endpoints = stack.start()
        model = ScriptedModelServer(SCRIPT)
        model.start_in_thread()
        try:
            settings = Settings(
                DATABASE_URL=endpoints.database_url,
                REDIS_URL=endpoints.redis_url,
                TEMPORAL_ADDRESS=endpoints.temporal_address,
                LOOMWORK_TOKENS="rec=rec",
                OPENAI_BASE_URL=model.base_url,
                OPENAI_API_KEY="x",
                LOOMWORK_CHAT_MODEL="scripted",
            )
            out.write_text(asyncio.run(record(settings)))
        finally:
            model.stop_in_thread()
            stack.stop()
    print(f"recorded {out}")


if __name__ == "__main__":
    main()
