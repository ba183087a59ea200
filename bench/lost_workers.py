"""Temporal worker processes a benchmark loses on purpose (SIGKILL, SIGTERM) and starts again,
and which of them runs a workflow's pending activity. Shared by bench/worker_recovery.py
(Loomwork's workers) and bench/peers_recovery.py (Loomwork's and the peers' workers)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowHandle


class WorkerProcesses:
    """`count` worker processes, each started by `args`; a lost one is started again."""

    def __init__(
        self, args: list[str], env: dict[str, str], log: Path, cwd: Path, count: int = 2
    ) -> None:
        self.args, self.env, self.log, self.cwd, self.count = args, env, log, cwd, count
        self.processes = {p.pid: p for p in (self._start() for _ in range(count))}

    def _start(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.args,
            cwd=self.cwd,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def lose(self, pid: int, how: signal.Signals) -> None:
        """Send `how` to the worker `pid` (one of these), which counts as lost from now."""
        process = self.processes.pop(pid)
        process.send_signal(how)
        if how == signal.SIGKILL:
            process.wait()

    async def replace_lost(self, client: Client, task_queue: str) -> None:
        """Start a worker for each one lost; return once every worker polls the task queue
        for workflow tasks and for activities (Temporal names a poller `pid@host`)."""
        while len(self.processes) < self.count:
            process = self._start()
            self.processes[process.pid] = process
        for _ in range(1200):
            polling = [
                await _pollers(client, task_queue, kind)
                for kind in (
                    TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
                    TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
                )
            ]
            if all(set(self.processes) <= pids for pids in polling):
                return
            for process in self.processes.values():
                if process.poll() is not None:
                    raise RuntimeError(f"a worker exited ({process.returncode}); see {self.log}")
            await asyncio.sleep(0.1)
        raise RuntimeError(f"the workers did not start polling; see {self.log}")

    def stop(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes.clear()


async def _pollers(client: Client, task_queue: str, kind: TaskQueueType.ValueType) -> set[int]:
    request = DescribeTaskQueueRequest(
        namespace=client.namespace, task_queue=TaskQueue(name=task_queue), task_queue_type=kind
    )
    described = await client.workflow_service.describe_task_queue(request)
    return {int(p.identity.split("@")[0]) for p in described.pollers if "@" in p.identity}


async def worker_of_pending_activity(handle: WorkflowHandle[Any, Any]) -> int:
    """The pid of the worker Temporal names on the workflow's one pending activity."""
    description = await handle.describe()
    [pending] = description.raw_description.pending_activities
    return int(pending.last_worker_identity.split("@")[0])
