"""Record run histories for the replay tests, from the code checked out here.

    .venv/bin/python tests/histories/record.py tests/histories/agent_run_<version>.json
    .venv/bin/python tests/histories/record.py --workflows tests/histories/dsl_run_<version>
    .venv/bin/python tests/histories/record.py --sub-agents tests/histories/agent_run_<version>
    .venv/bin/python tests/histories/record.py --fork tests/histories/agent_run_<version>_fork.json
    .venv/bin/python tests/histories/record.py --fallback-and-schedules tests/histories/<version>
    .venv/bin/python tests/histories/record.py --ingestion tests/histories/ingestion_<version>.json

An agent run: one run through the gRPC API on a fresh embedded stack, of an agent made like
`assistant` with an approval timeout of an hour: a tool call, a call that needs approval
(approved by ResumeRun before its timeout), a call of a client tool (answered by
SubmitToolResults), then the answer; `--fork`: a fork of that run from its answer step
(ForkRun). `--sub-agents`: a run whose agent calls another as a tool
(whose call of `send_email` is approved through the top-level run) and then hands off to a
third, written to `<prefix>.json` (the top-level run) and `<prefix>_sub_run.json` (the
sub-agent run). `--fallback-and-schedules`: an agent run whose first step falls back from a
model answering 503 to the agent's next model (`agent_run_<version>_fallback.json`), and the
runs a schedule starts when triggered, of the `assistant` agent
(`agent_run_<version>_scheduled.json`) and of order-pipeline
(`dsl_run_<version>_scheduled_order-pipeline.json`). `--ingestion`: one RagIngestion of three
documents through IngestDocuments (one of several embedding batches, one small, one
unreadable), its runs continuing as new every 4 activities: its first run to
`<prefix>.json`, its last to `<prefix>_last_run.json`. `--workflows`: one DslRun of
each example workflow through StartRun (linear, branching, and suspend → ResumeRun), written
to `<prefix>_<workflow>.json`. Record them per released version of the workflow code and
keep them all: the replay tests (`test_agent_run_replay.py`, `test_workflow_run_replay.py`,
`test_ingestion_replay.py`)
replay every recorded history against the current code, so a change that would break runs
already under way fails there (guard such a change with `workflow.patched`). An older
version is recorded by running this file (copied in) from a `git worktree` of that commit.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import grpc
from temporalio.client import ScheduleActionExecutionStartWorkflow

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from google.protobuf import struct_pb2

from loomwork.config import Settings
from loomwork.testing import Failure, ScriptedModelServer, ScriptedToolCall, Turn
from loomwork.testing.script import ChatRequest
from protos.loomwork.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    rag_pb2,
    rag_pb2_grpc,
    run_pb2,
    workflow_pb2,
    workflow_pb2_grpc,
)
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.transport.grpc_app import build_grpc_app
from server.worker import build_worker

AUTH = (("authorization", "Bearer rec"),)
SCRIPT = [
    Turn(tool_calls=[ScriptedToolCall("add", {"numbers": [2, 3]}, id="c_add")]),
    Turn(tool_calls=[ScriptedToolCall("send_email", {"to": "ada@example.com"}, id="c_mail")]),
    Turn(tool_calls=[ScriptedToolCall("get_weather", {"city": "Paris"}, id="c_weather")]),
    Turn(text="Sent: 5. Sunny in Paris.", chunk_size=3),
    Turn(text="Forked: sunny.", chunk_size=3),  # `--fork`: the fork's one model call
]
SUB_AGENTS_SCRIPT = [  # the lead asks the mailer, which mails; the lead hands off to the closer
    Turn(tool_calls=[ScriptedToolCall("mailer", {"prompt": "mail Ada"}, id="c_ask")]),
    Turn(tool_calls=[ScriptedToolCall("send_email", {"to": "ada@example.com"}, id="c_mail")]),
    Turn(text="Mailed.", chunk_size=3),
    Turn(tool_calls=[ScriptedToolCall("transfer_to_closer", {}, id="c_hand")]),
    Turn(text="Done: mailed.", chunk_size=3),
]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


async def record(settings: Settings, *, fork: bool = False) -> str:
    """The run's history as JSON; `fork`: the history of a fork of it from its last step
    (ForkRun: its first three steps reused, the answer asked for again)."""
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    worker = build_worker(runtime)
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    async with worker, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        agent = agent_pb2.Agent(
            name="recorder", instructions="Help.", tool_names=["add", "send_email"]
        )
        agent.approval_timeout.FromSeconds(3600)
        await agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent), metadata=AUTH)
        request = agent_pb2.StreamRequest(
            agent_name="recorder",
            prompt="add 2 and 3, then mail Ada, then ask for the weather",
            client_run_id="replay",
            client_tools=[
                agent_pb2.ClientTool(name="get_weather", parameters_schema=_struct(WEATHER))
            ],
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
            if response.event.HasField("tool_call_requested"):
                await agents.SubmitToolResults(
                    agent_pb2.SubmitToolResultsRequest(
                        run_id="replay",
                        results=[
                            agent_pb2.ClientToolResult(
                                tool_call_id="c_weather",
                                result=struct_pb2.Value(string_value="sunny"),
                            )
                        ],
                    ),
                    metadata=AUTH,
                )
            if response.event.HasField("run_finished"):
                assert response.event.run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED
        run = await agents.GetRun(
            agent_pb2.AgentServiceGetRunRequest(run_id="replay"), metadata=AUTH
        )
        if fork:
            run = await agents.ForkRun(
                agent_pb2.AgentServiceForkRunRequest(
                    run_id="replay", from_step=4, client_run_id="replay-fork"
                ),
                metadata=AUTH,
            )
        handle = runtime.temporal.get_workflow_handle(run.run.temporal_workflow_id)
        await handle.result()
        history = (await handle.fetch_history()).to_json()
    await app.stop(0)
    await runtime.close()
    return history


async def record_sub_agents(settings: Settings) -> dict[str, str]:
    """The histories of a run that calls an agent as a tool and hands off, and of its
    sub-agent run, as JSON."""
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    worker = build_worker(runtime)
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    async with worker, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        for agent in (
            agent_pb2.Agent(name="mailer", instructions="Mail.", tool_names=["send_email"]),
            agent_pb2.Agent(name="closer", instructions="Close."),
            agent_pb2.Agent(
                name="lead", instructions="Lead.", tool_names=["agent:mailer"], handoffs=["closer"]
            ),
        ):
            await agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent), metadata=AUTH)
        request = agent_pb2.StreamRequest(
            agent_name="lead", prompt="mail Ada", client_run_id="team"
        )
        sub_run = ""
        async for response in agents.Stream(request, metadata=AUTH):
            event = response.event
            if event.HasField("approval_requested"):
                sub_run = event.run_path.split("/")[-1]
                await agents.ResumeRun(
                    agent_pb2.AgentServiceResumeRunRequest(
                        run_id="team",
                        decisions=[agent_pb2.ApprovalDecision(tool_call_id="c_mail", approve={})],
                    ),
                    metadata=AUTH,
                )
            if event.HasField("run_finished") and not event.run_path:
                assert event.run_finished.status == run_pb2.RUN_STATUS_SUCCEEDED
        histories = {}
        for name, agent, run_id in (("", "lead", "team"), ("_sub_run", "mailer", sub_run)):
            handle = runtime.temporal.get_workflow_handle(f"agent/{agent}/rec/{run_id}")
            await handle.result()
            histories[name] = (await handle.fetch_history()).to_json()
    await app.stop(0)
    await runtime.close()
    return histories


def _fallback_script(request: ChatRequest) -> Failure | Turn:
    if request.model == "model-a":
        return Failure(status=503, message="overloaded")
    return Turn(text="Answered by B.", chunk_size=3)


async def record_fallback_and_schedules(settings: Settings) -> dict[str, str]:
    """Histories of an agent run that fell back to its next model, and of an agent run and a
    DslRun started by schedules, as JSON by file name."""
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    worker = build_worker(runtime)
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    histories = {}
    async with worker, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        workflows = workflow_pb2_grpc.WorkflowServiceStub(channel)
        agent = agent_pb2.Agent(
            name="fallback", instructions="Help.", model="model-a", fallback_models=["model-b"]
        )
        await agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent), metadata=AUTH)
        run = await agents.Generate(
            agent_pb2.GenerateRequest(agent_name="fallback", prompt="hi", client_run_id="fb"),
            metadata=AUTH,
        )
        assert run.run.status == run_pb2.RUN_STATUS_SUCCEEDED, run.run
        handle = runtime.temporal.get_workflow_handle(run.run.temporal_workflow_id)
        histories["agent_run_{}_fallback"] = (await handle.fetch_history()).to_json()
        data, _ = WORKFLOW_RUNS["order-pipeline"]
        for schedule in (
            workflow_pb2.Schedule(
                id="nightly",
                cron="0 2 * * *",
                workflow_run=workflow_pb2.ScheduledWorkflowRun(
                    workflow_id="order-pipeline", input=_struct(data)
                ),
            ),
            workflow_pb2.Schedule(
                id="digest",
                cron="0 8 * * *",
                agent_run=workflow_pb2.ScheduledAgentRun(agent_name="assistant", prompt="hi"),
            ),
        ):
            await workflows.CreateSchedule(
                workflow_pb2.CreateScheduleRequest(schedule=schedule, paused=True), metadata=AUTH
            )
            await workflows.TriggerSchedule(
                workflow_pb2.TriggerScheduleRequest(schedule_id=schedule.id), metadata=AUTH
            )
        for name, kind in (
            ("dsl_run_{}_scheduled_order-pipeline", "nightly"),
            ("agent_run_{}_scheduled", "digest"),
        ):
            temporal_id = f"loomwork/rec/{kind}"
            schedule_handle = runtime.temporal.get_schedule_handle(temporal_id)
            for _ in range(150):  # the trigger's run is listed a moment later
                description = await schedule_handle.describe()
                if description.info.recent_actions:
                    break
                await asyncio.sleep(0.2)
            action = description.info.recent_actions[0].action
            assert isinstance(action, ScheduleActionExecutionStartWorkflow)
            handle = runtime.temporal.get_workflow_handle(action.workflow_id)
            await handle.result()
            histories[name] = (await handle.fetch_history()).to_json()
    await app.stop(0)
    await runtime.close()
    return histories


WORKFLOW_RUNS = {  # example workflow -> its input, and the resume data of its suspended step
    "order-pipeline": (
        {
            "customer": "Ada",
            "country": "DE",
            "lines": [{"sku": "loom", "quantity": 2, "unit_price": 50.0}],
        },
        None,
    ),
    "ticket-triage": ({"subject": "Wrong invoice"}, None),
    "expense-approval": (
        {"employee": "Grace", "amount": 250.0, "reason": "conference"},
        {"approved": True, "approver": "Linus"},
    ),
}


def _struct(data: dict[str, object]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


async def record_workflows(settings: Settings) -> dict[str, str]:
    """One finished DslRun of each example workflow: its history as JSON, by workflow."""
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    worker = build_worker(runtime)
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    histories = {}
    async with worker, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = workflow_pb2_grpc.WorkflowServiceStub(channel)
        for name, (data, resume) in WORKFLOW_RUNS.items():
            run = (
                await stub.StartRun(
                    workflow_pb2.WorkflowServiceStartRunRequest(
                        workflow_id=name, input=_struct(data), client_run_id=f"replay-{name}"
                    ),
                    metadata=AUTH,
                )
            ).run
            watch = workflow_pb2.WorkflowServiceWatchRunRequest(run_id=run.id)
            async for response in stub.WatchRun(watch, metadata=AUTH):
                event = response.event
                if event.HasField("step_suspended") and resume is not None:
                    await stub.ResumeRun(
                        workflow_pb2.WorkflowServiceResumeRunRequest(
                            run_id=run.id,
                            step_id=event.step_suspended.step_id,
                            resume_data=_struct(resume),
                        ),
                        metadata=AUTH,
                    )
                if event.HasField("run_finished"):
                    assert event.run_finished.status == workflow_pb2.WORKFLOW_RUN_STATUS_SUCCEEDED
            handle = runtime.temporal.get_workflow_handle(run.temporal_workflow_id)
            await handle.result()
            histories[name] = (await handle.fetch_history()).to_json()
    await app.stop(0)
    await runtime.close()
    return histories


async def record_ingestion(settings: Settings) -> dict[str, str]:
    """One finished ingestion of three documents: the histories of its first run (``) and,
    where it continued as new, of its last run (`_last_run`), as JSON."""
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    worker = build_worker(runtime)
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    async with worker, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        rag = rag_pb2_grpc.RagServiceStub(channel)
        await rag.CreateIndex(
            rag_pb2.CreateIndexRequest(index=rag_pb2.Index(name="replay")), metadata=AUTH
        )
        long = "\n\n".join(f"Paragraph {p} about looms and shuttles." for p in range(150))
        started = await rag.IngestDocuments(
            rag_pb2.IngestDocumentsRequest(
                index_name="replay",
                documents=[
                    rag_pb2.DocumentInput(document_id="long", text=long),
                    rag_pb2.DocumentInput(document_id="short", text="A loom weaves cloth."),
                    rag_pb2.DocumentInput(document_id="bad", data=bytes(range(256)) * 4),
                ],
                chunking=rag_pb2.ChunkingOptions(chunk_size=60),
                client_ingestion_id="replay",
            ),
            metadata=AUTH,
        )
        workflow_id = started.ingestion.temporal_workflow_id
        last = runtime.temporal.get_workflow_handle(workflow_id)
        await last.result()
        last_history = await last.fetch_history()
        attributes = last_history.events[0].workflow_execution_started_event_attributes
        first = runtime.temporal.get_workflow_handle(
            workflow_id, run_id=attributes.first_execution_run_id
        )
        first_history = await first.fetch_history()
        histories = {"": first_history.to_json()}
        if attributes.first_execution_run_id != last_history.run_id:
            histories["_last_run"] = last_history.to_json()
    await app.stop(0)
    await runtime.close()
    return histories


def main() -> None:
    workflows = sys.argv[1] == "--workflows"
    sub_agents = sys.argv[1] == "--sub-agents"
    fallback = sys.argv[1] == "--fallback-and-schedules"
    fork = sys.argv[1] == "--fork"
    ingestion = sys.argv[1] == "--ingestion"
    out = Path(sys.argv[-1]).resolve()
    with tempfile.TemporaryDirectory(prefix="loomwork-history-") as tmp:
        stack = EmbeddedStack(Path(tmp), temporal_ui=False)
        endpoints = stack.start()
        script = SUB_AGENTS_SCRIPT if sub_agents else SCRIPT
        model = ScriptedModelServer(_fallback_script if fallback else script)
        model.start_in_thread()
        try:
            settings = Settings(
                DATABASE_URL=endpoints.database_url,
                REDIS_URL=endpoints.redis_url,
                TEMPORAL_ADDRESS=endpoints.temporal_address,
                LOOMWORK_TOKENS="rec=rec:admin",  # it creates agents and schedules
                LOOMWORK_HOME=Path(tmp),  # its dev secret key too, not the current directory's
                OPENAI_BASE_URL=model.base_url,
                OPENAI_API_KEY="x",
                LOOMWORK_CHAT_MODEL="scripted",
                LOOMWORK_DEMO=True,  # the `assistant` agent and the example workflows
                LOOMWORK_MODEL_CALL_ATTEMPTS=2,  # a fallback after two 503s
                # Small ingestion runs, so one continues as new (older code ignores it).
                LOOMWORK_INGEST_CONTINUE_AFTER=4,
            )
            if workflows:
                for name, history in asyncio.run(record_workflows(settings)).items():
                    path = out.with_name(f"{out.name}_{name}.json")
                    path.write_text(history)
                    print(f"recorded {path}")
            elif fallback:
                version = out.name
                for name, history in asyncio.run(record_fallback_and_schedules(settings)).items():
                    path = out.with_name(f"{name.format(version)}.json")
                    path.write_text(history)
                    print(f"recorded {path}")
            elif ingestion:
                for suffix, history in asyncio.run(record_ingestion(settings)).items():
                    path = out.with_name(f"{out.stem}{suffix}.json")
                    path.write_text(history)
                    print(f"recorded {path}")
            elif sub_agents:
                for suffix, history in asyncio.run(record_sub_agents(settings)).items():
                    path = out.with_name(f"{out.stem}{suffix}.json")
                    path.write_text(history)
                    print(f"recorded {path}")
            else:
                out.write_text(asyncio.run(record(settings, fork=fork)))
                print(f"recorded {out}")
        finally:
            model.stop_in_thread()
            stack.stop()


if __name__ == "__main__":
    main()
