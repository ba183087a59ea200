"""How soon an agent run finishes after the worker streaming its model step is lost: killed
(SIGKILL: another worker retries the step once its heartbeat timeout passes) or stopped
(SIGTERM: the worker hands the step back at once) — against the same run undisturbed.

    .venv/bin/python bench/worker_recovery.py [--runs 5]

Two `loomwork worker` processes poll the task queue, as a deployment with two replicas does;
the scripted model (in this process) streams each answer over ~2 s. For each run: it starts,
and once its first text delta is in the event log (plus 0.3 s), the worker whose identity
Temporal shows on the model step's pending activity is killed or stopped; measured from the
signal to the run's end. The lost worker is started again before the next run, as a process
manager would. The baseline, in the same run: the same run undisturbed, from its start to
its end. Goal (issue #23): p50 ≤ 10 s from SIGKILL to the run's end (peers measured 40 s
and 70 s). Every run must succeed with its retried step marked (`step_retrying`).
Starts embedded Postgres, Valkey and Temporal in a temporary home.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lost_workers import WorkerProcesses, worker_of_pending_activity
from scripted_settings import scripted_settings

from loomwork.agents.events import decode_event
from loomwork.agents.run_models import AgentRunRequest, RunOutcome
from loomwork.agents.run_start import event_log_key
from loomwork.config import Settings
from loomwork.integrations.secret_box import dev_secret
from loomwork.messages import NewMessage, Role, TextPart
from loomwork.testing import ChatRequest, ScriptedModelServer, Turn
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.temporal import register_search_attributes
from workflows.agent_run import AgentRunWorkflow

ROOT = Path(__file__).resolve().parent.parent
ANSWER = " ".join(f"word{i}" for i in range(80))


def answer(request: ChatRequest) -> Turn:
    return Turn(text=ANSWER, chunk_size=8, chunk_delay=0.03)  # ~2 s of streaming


def loomwork_workers(settings: Settings, log: Path, count: int) -> WorkerProcesses:
    """`count` `loomwork worker` processes on the settings' servers and task queue."""
    env = dict(
        os.environ,
        DATABASE_URL=settings.database_url or "",
        REDIS_URL=settings.redis_url or "",
        TEMPORAL_ADDRESS=settings.temporal_address or "",
        LOOMWORK_HOME=str(settings.home),
        OPENAI_BASE_URL=settings.openai_base_url or "",
        OPENAI_API_KEY="x",
        LOOMWORK_CHAT_MODEL="scripted",
        LOOMWORK_DEMO="true",
        # `loomwork worker` needs one: the key this process's runtime uses.
        LOOMWORK_SECRET_KEY=settings.secret_key or dev_secret(settings.home),
    )
    return WorkerProcesses([sys.executable, "-m", "server.cli", "worker"], env, log, ROOT, count)


async def streaming(runtime: Runtime, key: str) -> None:
    """Returns once the run's first text delta is in its event log."""
    for _ in range(3000):
        events = await runtime.events.read(key, 0)
        if any(decode_event(e.payload).type == "text_delta" for e in events):
            return
        await asyncio.sleep(0.02)
    raise RuntimeError("the run never streamed")


async def one_run(runtime: Runtime, workers: WorkerProcesses, how: signal.Signals | None) -> float:
    """Seconds from the signal (or, undisturbed, from the start) to the run's end."""
    run_id = f"run_{uuid.uuid4().hex[:12]}"
    key = event_log_key("bench", run_id)
    started = time.monotonic()
    handle = await runtime.temporal.start_workflow(
        AgentRunWorkflow.run,
        AgentRunRequest(
            tenant="bench",
            run_id=run_id,
            agent_name="assistant",
            input_messages=[NewMessage(role=Role.USER, parts=[TextPart(text="go")])],
        ),
        id=f"agent/assistant/bench/{run_id}",
        task_queue=runtime.settings.task_queue,
    )
    if how is not None:
        await streaming(runtime, key)
        await asyncio.sleep(0.3)
        workers.lose(await worker_of_pending_activity(handle), how)
        started = time.monotonic()
    outcome: RunOutcome = await handle.result()
    ended = time.monotonic()
    events = [decode_event(e.payload).type for e in await runtime.events.read(key, 0)]
    assert outcome.status == "succeeded", outcome
    assert how is None or "step_retrying" in events, events
    return ended - started


async def run(settings: Settings, log: Path, runs: int) -> None:
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    workers = loomwork_workers(settings, log, 2)
    queue = settings.task_queue
    await workers.replace_lost(runtime.temporal, queue)
    samples: dict[str, list[float]] = {"undisturbed": [], "SIGKILL": [], "SIGTERM": []}
    try:
        await one_run(runtime, workers, None)  # warm up
        for _ in range(runs):
            samples["undisturbed"].append(await one_run(runtime, workers, None))
            for how in (signal.SIGKILL, signal.SIGTERM):
                samples[how.name].append(await one_run(runtime, workers, how))
                await workers.replace_lost(runtime.temporal, queue)
    finally:
        workers.stop()
        await runtime.close()
    base = statistics.median(samples["undisturbed"])
    print(f"an agent run whose worker is lost mid-stream; {runs} runs each, two workers")
    print(f"  undisturbed run, start → end        p50 {base:5.1f} s")
    for name, what in (("SIGKILL", "killed"), ("SIGTERM", "stopped")):
        p50 = statistics.median(samples[name])
        print(
            f"  worker {what:7s} ({name}) → run's end  p50 {p50:5.1f} s, max"
            f" {max(samples[name]):5.1f} s; {p50 / base:4.1f}× an undisturbed run"
        )
    kill = statistics.median(samples["SIGKILL"])
    print(f"  goal: p50 ≤ 10 s after SIGKILL: {'met' if kill <= 10 else 'missed'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(Path(tmp), temporal_ui=False)
        endpoints = stack.start()
        model = ScriptedModelServer(answer)
        url = model.start_in_thread()
        try:
            settings = scripted_settings(endpoints, url, home=Path(tmp))
            asyncio.run(run(settings, Path(tmp) / "workers.log", args.runs))
        finally:
            model.stop_in_thread()
            stack.stop()


if __name__ == "__main__":
    main()
