"""Faults under load, nothing lost: 50 agent runs and 20 workflow runs in flight, streamed by
clients that reconnect, while one part of the deployment is killed (SIGKILL) at a time.

    .venv/bin/python bench/faults.py [--agents 50] [--workflows 20]
        [--faults none valkey postgres temporal worker server]

Topology: embedded PostgreSQL, Valkey and the Temporal dev server in one temporary home,
supervised (`EmbeddedStack`: a server that dies is started again on its ports and data), and
separate `loomwork server` (2) and `loomwork worker` (2) processes, started as a user starts
them. The model is the scripted one (in this process): each agent run calls the tool
`count_effect` (bench/fault_app.py: a row per call in PostgreSQL, keyed by the call's
idempotency key, counting executions), then streams a ~100-word answer a few ms per token.
Each workflow run (`fault-flow`) has four steps of about a second, one of them the same tool.

For each fault, in turn: the runs are started (agent runs with Stream, workflow runs with
StartRun then WatchRun, spread over the servers, each with a client_run_id); once half of
the agent runs stream text, the fault's process is killed with SIGKILL — Valkey, PostgreSQL
or Temporal (the supervisor starts it again), a worker or a server (started again by this
bench a second later, as a process manager would). Every client reconnects with
WatchRun(after_event_id=<last seen>) on the next server whenever its stream breaks. Round
`none` kills nothing: the baseline.

Checked per fault, and printed as one row: runs SUCCEEDED (by their terminal event and by
GetRun), seconds from the kill until the last run ended, when health said SERVING again on
every server, reconnects, duplicate and missing event ids, the agents' answers rebuilt from
their streams, side effects (one row per run: none missing, none repeated; re-executions of
one call are shown, not failed: Temporal runs an activity at least once, and the key makes
the effect once), statuses other than UNAVAILABLE, and the longest a stream was silent.
Exits 1 if anything was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fault_app import CREATE_EFFECTS, EFFECTS_TABLE
from fault_clients import (
    Followed,
    Server,
    agent_stream,
    follow,
    rebuilt_text,
    run_status,
    serving,
    start_workflow,
    workflow_stream,
)

from loomwork.testing import (
    ChatRequest,
    ScriptedModelServer,
    ScriptedToolCall,
    ScriptFunction,
    Turn,
)
from server.embedded import EmbeddedEndpoints, EmbeddedStack
from server.embedded.home import pick_free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
FAULTS = ("none", "valkey", "postgres", "temporal", "worker", "server")
ANSWER = " ".join(f"word{i}" for i in range(100))
AGENT, WORKFLOW = "fault-agent", "fault-flow"
# Settings a developer's shell may hold that would change what the processes do.
UNSET = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "LOOMWORK_CHAT_MODEL", "LOOMWORK_DEMO"}


def model_script(token_delay: float) -> ScriptFunction:
    """The model: a run's first call asks for count_effect with the run's marker (its
    prompt), the next streams ANSWER in 8-character chunks `token_delay` apart."""

    def answer(request: ChatRequest) -> Turn:
        if not request.tool_results:
            call = ScriptedToolCall("count_effect", {"marker": request.last_user_text})
            return Turn(tool_calls=[call])
        return Turn(text=ANSWER, chunk_size=8, chunk_delay=token_delay)

    return answer


class Processes:
    """The `loomwork server` and `loomwork worker` processes, each on its own log."""

    def __init__(self, env: dict[str, str], logs: Path, servers: int, workers: int) -> None:
        self.env = env
        self.logs = logs
        self.addresses = {
            f"server-{i}": f"127.0.0.1:{pick_free_port(set())}" for i in range(servers)
        }
        self.names = [*self.addresses, *(f"worker-{i}" for i in range(workers))]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        role = name.split("-")[0]
        env = dict(self.env)
        if role == "server":
            env["LOOMWORK_GRPC_ADDRESS"] = self.addresses[name]
            env["LOOMWORK_HTTP_ADDRESS"] = f"127.0.0.1:{pick_free_port(set())}"
        with (self.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "server.cli", role],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def exited(self) -> list[str]:
        """The processes that ended though nobody killed them."""
        return [n for n, p in self.procs.items() if p.poll() is not None]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def embedded_pid(home: Path, name: str) -> int:
    if name == "postgres":
        return int((home / "postgres" / "postmaster.pid").read_text().split()[0])
    return int((home / name / f"{name}.pid").read_text())


@dataclass
class Row:
    """What one fault did to the runs."""

    fault: str
    agents: int = 0
    agents_ok: int = 0
    flows: int = 0
    flows_ok: int = 0
    last_done: float | None = None  # seconds from the kill to the last run's end
    median_done: float | None = None
    health_back: float | None = None  # seconds from the kill to SERVING everywhere again
    went_down: bool = False
    reconnects: int = 0
    duplicates: int = 0
    gaps: int = 0
    stalls: int = 0
    text_wrong: int = 0
    effects_missing: int = 0
    effects_repeated: int = 0
    reexecuted: int = 0
    longest_silence: float = 0.0
    codes: Counter[str] = field(default_factory=Counter)
    keep_alives: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def lost(self) -> bool:
        return bool(self.problems)


@dataclass
class Bench:
    args: argparse.Namespace
    home: Path
    database_url: str
    processes: Processes
    servers: list[Server]
    embedded_log: list[str]

    def kill(self, fault: str) -> str | None:
        """Kill the fault's process; the name of a Loomwork process to start again."""
        if fault in ("valkey", "postgres", "temporal"):
            os.kill(embedded_pid(self.home, fault), signal.SIGKILL)
            return None
        if fault in ("worker", "server"):
            name = f"{fault}-0"
            self.processes.kill(name)
            return name
        return None

    async def ready(self) -> bool:
        """Wait until every server says SERVING (False: a process exited, or 2 minutes)."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not self.processes.exited():
            if all(await asyncio.gather(*(serving(s) for s in self.servers))):
                return True
            await asyncio.sleep(0.3)
        return False

    async def restart_later(self, name: str | None) -> None:
        if name is not None:
            await asyncio.sleep(self.args.restart_delay)
            self.processes.start(name)

    async def watch_health(self, since: float, done: asyncio.Event) -> tuple[float | None, bool]:
        """Poll every server's health until the runs are done and all say SERVING: (seconds
        from `since` to SERVING everywhere after the last time one was not, whether one was
        not at all)."""
        last_down: float | None = None
        back: float | None = None
        deadline = since + self.args.deadline + 60
        while time.monotonic() < deadline:
            ok = all(await asyncio.gather(*(serving(s) for s in self.servers)))
            now = time.monotonic()
            if not ok:
                last_down, back = now, None
            elif back is None:
                back = now
            if back is not None and done.is_set():
                return back - since, last_down is not None
            await asyncio.sleep(0.25)
        return None, last_down is not None

    async def effects(self, markers: list[str]) -> dict[str, tuple[int, int]]:
        """Per marker: (rows, executions) of count_effect."""
        query = (
            f"select marker, count(*), sum(executions) from {EFFECTS_TABLE} "
            "where marker = any(%s) group by marker"
        )
        async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
            rows = await (await conn.execute(query, (markers,))).fetchall()
        return {str(m): (int(n), int(e)) for m, n, e in rows}

    async def round(self, fault: str) -> Row:
        args = self.args
        nonce = uuid.uuid4().hex[:6]
        agents = [Followed("agent", f"{fault}-a{i}-{nonce}") for i in range(args.agents)]
        flows = [Followed("workflow", f"{fault}-w{i}-{nonce}") for i in range(args.workflows)]
        started = time.monotonic()
        deadline = started + args.deadline
        n = len(self.servers)

        async def agent(i: int, run: Followed) -> None:
            stream = agent_stream(AGENT, run.run_id)
            await follow(run, self.servers, i, stream, deadline=deadline, stall=args.stall)

        async def flow(i: int, run: Followed) -> None:
            if await start_workflow(run, self.servers, i, WORKFLOW, deadline):
                stream = workflow_stream(run.run_id)
                await follow(run, self.servers, i + 1, stream, deadline=deadline, stall=args.stall)

        tasks = [asyncio.create_task(agent(i, r)) for i, r in enumerate(agents)]
        tasks += [asyncio.create_task(flow(i % n, r)) for i, r in enumerate(flows)]
        # In flight: half of the agent runs stream their answers.
        await in_flight(agents, patience=60)
        self.embedded_log.clear()
        killed_at = time.monotonic()
        restarted = self.kill(fault)
        done = asyncio.Event()
        health = asyncio.create_task(self.watch_health(killed_at, done))
        restart = asyncio.create_task(self.restart_later(restarted))
        await asyncio.gather(*tasks)
        done.set()
        await restart
        health_back, went_down = await health
        return await self.check(fault, agents, flows, killed_at, health_back, went_down)

    async def check(
        self,
        fault: str,
        agents: list[Followed],
        flows: list[Followed],
        killed_at: float,
        health_back: float | None,
        went_down: bool,
    ) -> Row:
        runs = agents + flows
        statuses = await asyncio.gather(
            *(run_status(r, self.servers, time.monotonic() + 60) for r in runs)
        )
        effects = await self.effects([r.run_id for r in runs])
        row = Row(fault, agents=len(agents), flows=len(flows), health_back=health_back)
        row.went_down = went_down
        ends = [r.done_at - killed_at for r in runs if r.done_at is not None]
        row.last_done = max(ends) if ends else None
        row.median_done = statistics.median(ends) if ends else None
        for run, status in zip(runs, statuses, strict=True):
            ok = run.succeeded() and status.endswith("SUCCEEDED")
            if run.kind == "agent":
                row.agents_ok += ok
                if run.done_at is not None and rebuilt_text(run) != ANSWER:
                    row.text_wrong += 1
                    row.problems.append(f"{run.run_id}: the streamed answer differs")
            else:
                row.flows_ok += ok
            if not ok:
                last = run.events[-1].WhichOneof("event") if run.events else None
                row.problems.append(f"{run.run_id}: last event {last}, GetRun {status}")
            if not run.dense() or run.duplicates or run.gaps:
                row.problems.append(
                    f"{run.run_id}: ids not dense ({run.gaps} gaps, {run.duplicates} duplicates)"
                )
            rows, executions = effects.get(run.run_id, (0, 0))
            row.effects_missing += rows == 0
            row.effects_repeated += rows > 1
            row.reexecuted += executions - rows
            if rows != 1:
                row.problems.append(f"{run.run_id}: {rows} side effects")
            row.reconnects += run.reconnects
            row.duplicates += run.duplicates
            row.gaps += run.gaps
            row.stalls += run.stalls
            row.codes.update(run.codes)
            row.keep_alives.update(run.keep_alives)
            row.longest_silence = max(row.longest_silence, run.longest_silence)
            row.problems += [f"{run.run_id}: {d}" for d in run.details]
        if row.stalls:
            row.problems.append(f"{row.stalls} streams silent for {self.args.stall:g} s")
        if health_back is None:
            row.problems.append("health did not come back to SERVING")
        row.problems += [f"{name} exited by itself" for name in self.processes.exited()]
        return row


async def in_flight(runs: list[Followed], patience: float) -> None:
    """Wait until half of `runs` made progress (or `patience` seconds passed)."""
    waits = [asyncio.create_task(r.progressed.wait()) for r in runs]
    pending = set(waits)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(patience):
            while pending and len(waits) - len(pending) < max(1, len(runs) // 2):
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    for wait in pending:
        wait.cancel()


HEADER = (
    f"{'fault':<9} {'agents':>7} {'flows':>6} {'last end':>9} {'median':>7} {'health':>8} "
    f"{'reconn':>6} {'dup/gap':>7} {'effects':>9} {'re-run':>6} {'silence':>8}  statuses"
)


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def format_row(row: Row) -> str:
    health = seconds(row.health_back) if row.went_down else "stayed"
    effects = f"{row.effects_missing}/{row.effects_repeated}"
    codes = ", ".join(f"{c} {n}" for c, n in row.codes.most_common()) or "-"
    alive = ", ".join(
        f"{name.removeprefix('RUN_LIVENESS_')} {n}" for name, n in row.keep_alives.most_common()
    )
    if alive:
        codes += f"; keep-alives {alive}"
    return (
        f"{row.fault:<9} {row.agents_ok:>3}/{row.agents:<3} {row.flows_ok:>2}/{row.flows:<3} "
        f"{seconds(row.last_done):>9} {seconds(row.median_done):>7} {health:>8} "
        f"{row.reconnects:>6} {row.duplicates:>3}/{row.gaps:<3} {effects:>9} {row.reexecuted:>6} "
        f"{seconds(row.longest_silence):>8}  {codes}"
    )


LEGEND = """\
agents, flows: runs SUCCEEDED (terminal event and GetRun) / started; last end, median: seconds
from the kill until the last (median) run ended; health: seconds from the kill until every
server said SERVING again ("stayed": never NOT_SERVING); reconn: streams reopened; dup/gap:
event ids seen twice / skipped; effects: runs whose side effect is missing / repeated; re-run:
tool executions repeated under one idempotency key (at-least-once, the effect stays once);
silence: longest a stream went without an event; statuses: why streams broke, then the
keep-alives quiet streams got, by what they said of the run (OPEN, CLOSED, UNKNOWN)."""


async def run_bench(args: argparse.Namespace, bench: Bench) -> list[Row]:
    async with await psycopg.AsyncConnection.connect(bench.database_url, autocommit=True) as c:
        await c.execute(CREATE_EFFECTS)
    for name in bench.processes.names:
        bench.processes.start(name)
    if not await bench.ready():
        raise SystemExit(f"the servers did not come up; see {bench.processes.logs}")
    rows = []
    print(HEADER, flush=True)
    for fault in args.faults:
        row = await bench.round(fault)
        rows.append(row)
        print(format_row(row), flush=True)
        for line in bench.embedded_log:
            print(f"          embedded: {line}", flush=True)
        for problem in row.problems[:10]:
            print(f"          LOST: {problem}", flush=True)
        if len(row.problems) > 10:
            print(f"          ... and {len(row.problems) - 10} more", flush=True)
    print(LEGEND)
    return rows


def process_env(
    args: argparse.Namespace, tmp: Path, ep: EmbeddedEndpoints, model: str
) -> dict[str, str]:
    """The environment of every server and worker process."""
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(
        DATABASE_URL=ep.database_url or "",
        REDIS_URL=ep.redis_url or "",
        TEMPORAL_ADDRESS=ep.temporal_address or "",
        LOOMWORK_HOME=str(tmp / "loomwork"),
        LOOMWORK_SECRET_KEY="bench-faults-secret-key",
        LOOMWORK_TOKENS="bench=bench:admin",
        LOOMWORK_TASK_QUEUE=f"bench-faults-{uuid.uuid4().hex[:6]}",
        LOOMWORK_TOOL_MODULES="fault_app",
        LOOMWORK_WORKFLOW_MODULES="fault_app",
        OPENAI_BASE_URL=model,
        OPENAI_API_KEY="x",
        LOOMWORK_CHAT_MODEL="scripted",
        PYTHONPATH=os.pathsep.join([str(ROOT), str(BENCH)]),
        BENCH_FAULT_STEP_SECONDS=str(args.step_seconds),
        COLUMNS="200",
    )
    return env


async def bench_main(
    args: argparse.Namespace, tmp: Path, ep: EmbeddedEndpoints, model: str, lines: list[str]
) -> list[Row]:
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    processes = Processes(process_env(args, tmp, ep, model), logs, args.servers, args.workers)
    servers = [Server.open(address) for address in processes.addresses.values()]
    bench = Bench(args, tmp / "home", ep.database_url or "", processes, servers, lines)
    try:
        return await run_bench(args, bench)
    finally:
        processes.stop()
        for server in servers:
            await server.channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--agents", type=int, default=50, help="agent runs per fault")
    parser.add_argument("--workflows", type=int, default=20, help="workflow runs per fault")
    parser.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--token-delay", type=float, default=0.04, help="seconds per chunk")
    parser.add_argument("--step-seconds", type=float, default=1.0, help="per workflow step")
    parser.add_argument("--restart-delay", type=float, default=1.0, help="before a restart")
    parser.add_argument("--deadline", type=float, default=240.0, help="per fault, seconds")
    parser.add_argument("--stall", type=float, default=60.0, help="silence that cuts a stream")
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="loomwork-faults-"))
    lines: list[str] = []

    def progress(line: str) -> None:  # from the stack's watch thread
        if "died" in line or "restart" in line or "start again" in line:
            lines.append(f"{time.strftime('%H:%M:%S')} {line}")

    stack = EmbeddedStack(tmp / "home", temporal_ui=False, on_progress=progress)
    endpoints = stack.start()
    model = ScriptedModelServer(model_script(args.token_delay))
    rows: list[Row] = []
    try:
        rows = asyncio.run(bench_main(args, tmp, endpoints, model.start_in_thread(), lines))
    finally:
        model.stop_in_thread()
        stack.stop()
        shutil.rmtree(tmp / "home", ignore_errors=True)
    lost = not rows or any(row.lost for row in rows)
    if args.keep or lost:
        print(f"logs: {tmp / 'logs'}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    if lost:
        print("LOST: see above", file=sys.stderr)
        raise SystemExit(1)
    print("nothing lost")


if __name__ == "__main__":
    main()
