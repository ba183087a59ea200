"""Load: concurrent Stream calls of an agent run, time to the first event and to the end.

    .venv/bin/python bench/load.py [--streams 200] [--baseline 20]
        [--arrangements up split] [--token-delay 0.02] [--words 60] [--rounds 1]

The stack: embedded PostgreSQL, Valkey and the Temporal dev server in one temporary home;
the scripted model (a process of its own) streams a `--words`-word answer in 8-character
chunks `--token-delay` s apart (one model step per run, no tools). Two arrangements of
Loomwork:

- `up`: `loomwork up`, pointed at the stack by DATABASE_URL, REDIS_URL and TEMPORAL_ADDRESS:
  its gRPC server, and its worker in a child process of its own (a checkout from before
  session 11, given by `--code`, runs both in one process and one event loop);
- `split`: one `loomwork server` and one `loomwork worker` process.

For each: a few warm-up calls, then the baseline, `--baseline` Stream calls one at a time
(the same calls with nothing else in flight), then `--streams` Stream calls all at once
(`--rounds` times, one burst after the other).
Printed per phase: p50 / p99 seconds from the call to its first event (`run_started`), to
its first text delta (`txt`: the model's first chunk, relayed) and to its terminal event,
errors (a status, or a stream that ended without `run_finished` or whose text differs), and
the ratio of the loaded p50s to the baseline's; then whether the goal of issue #19 (first
event p50 <= 0.5 s and p99 <= 2 s, no error) is met, each process's peak RSS (VmHWM) and
the load average before and after, and each process's CPU time (user + system) during the
loaded phase (what the code costs, whatever else the machine runs). The first line names the
code's commit and the cores.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients import StreamedText
from loomwork.testing import ChatRequest, ScriptedModelServer, ScriptFunction, Turn
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc
from server.embedded import EmbeddedEndpoints, EmbeddedStack
from server.embedded.home import pick_free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
AUTH = (("authorization", "Bearer bench"),)
AGENT = "load-agent"
ARRANGEMENTS = {"up": ("up",), "split": ("server", "worker")}
# Settings a developer's shell may hold that would change what the processes do.
UNSET = {"OPENAI_API_KEY", "OPENAI_BASE_URL", "LOOMWORK_CHAT_MODEL", "LOOMWORK_DEMO"}
# Client channels the calls are spread over (as several callers would be).
CHANNELS = 8


@dataclass
class Call:
    """One Stream call as its client saw it (seconds from the call)."""

    first: float | None = None
    text: float | None = None  # to the first text delta
    end: float | None = None
    error: str | None = None
    run_id: str = ""


@dataclass
class Phase:
    name: str
    calls: list[Call] = field(default_factory=list)
    wall: float = 0.0

    def texts(self) -> list[float]:
        return [c.text for c in self.calls if c.text is not None]

    def firsts(self) -> list[float]:
        return [c.first for c in self.calls if c.first is not None]

    def ends(self) -> list[float]:
        return [c.end for c in self.calls if c.end is not None and c.error is None]

    def errors(self) -> Counter[str]:
        return Counter(c.error for c in self.calls if c.error is not None)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def model_script(answer: str, token_delay: float) -> ScriptFunction:
    def turn(request: ChatRequest) -> Turn:
        return Turn(text=answer, chunk_size=8, chunk_delay=token_delay)

    return turn


def serve_model(answer: str, token_delay: float, port: int) -> None:
    """The scripted model on `port`, until terminated (a process of its own)."""
    server = ScriptedModelServer(model_script(answer, token_delay), port=port)
    print(f"scripted model at {server.start_in_thread()}", flush=True)
    threading.Event().wait()


async def stream_once(stub: agent_pb2_grpc.AgentServiceStub, answer: str, prompt: str) -> Call:
    call = Call()
    started = time.perf_counter()
    text = StreamedText()  # as a reader rebuilds it (a retried step's text replaces its draft)
    finished = False
    try:
        async for response in stub.Stream(
            agent_pb2.StreamRequest(agent_name=AGENT, prompt=prompt), metadata=AUTH, timeout=300
        ):
            if call.first is None:
                call.first = time.perf_counter() - started
                call.run_id = response.event.run_id
                if not response.event.HasField("run_started"):
                    call.error = f"first event {response.event.WhichOneof('event')}"
            if call.text is None and response.event.HasField("text_delta"):
                call.text = time.perf_counter() - started
            text.add(response.event)
            finished = response.event.HasField("run_finished")
        call.end = time.perf_counter() - started
    except grpc.aio.AioRpcError as error:
        call.error = error.code().name
        return call
    if not finished:
        call.error = call.error or "no run_finished"
    elif str(text) != answer:
        call.error = call.error or "text differs"
    return call


class Stack:
    """The Loomwork processes of one arrangement, on their own logs and task queue."""

    def __init__(self, roles: tuple[str, ...], env: dict[str, str], logs: Path, code: Path) -> None:
        self.address = f"127.0.0.1:{pick_free_port(set())}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        env = dict(env)
        env.update(
            PYTHONPATH=os.pathsep.join([str(code), str(BENCH)]),
            LOOMWORK_GRPC_ADDRESS=self.address,
            LOOMWORK_TASK_QUEUE=f"bench-load-{uuid.uuid4().hex[:6]}",
        )
        for role in roles:
            env["LOOMWORK_HTTP_ADDRESS"] = f"127.0.0.1:{pick_free_port(set())}"
            with (logs / f"{'-'.join(roles)}-{role}.log").open("ab") as log:
                self.procs[role] = subprocess.Popen(
                    [sys.executable, "-m", "server.cli", role],
                    cwd=code,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )

    async def ready(self, channel: grpc.aio.Channel) -> None:
        health = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.3)
        raise SystemExit(f"nothing serves on {self.address}")

    def check_alive(self) -> None:
        if exited := [r for r, p in self.procs.items() if p.poll() is not None]:
            raise SystemExit(f"{exited} exited; see the logs")

    def _each_process(self, read: Callable[[int], float]) -> dict[str, float]:
        """`read(pid)` of each process, `up`'s worker process too."""
        out = {}
        for role, proc in self.procs.items():
            out[role] = read(proc.pid)
            for child in _children(proc.pid):
                if b"up-worker" in Path(f"/proc/{child}/cmdline").read_bytes():
                    out[f"{role}'s worker"] = read(child)
        return out

    def peak_rss_mb(self) -> dict[str, float]:
        """Each process's peak RSS, `up`'s worker process too."""
        return self._each_process(_peak_rss_mb)

    def cpu_seconds(self) -> dict[str, float]:
        """Each process's CPU time so far (user + system), `up`'s worker process too."""
        return self._each_process(_cpu_seconds)

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


def _peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if "VmHWM" in line) / 1024


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


async def phase(
    name: str, stubs: list[agent_pb2_grpc.AgentServiceStub], answer: str, n: int, parallel: bool
) -> Phase:
    result = Phase(name)
    started = time.perf_counter()
    if parallel:
        result.calls = list(
            await asyncio.gather(
                *(stream_once(stubs[i % len(stubs)], answer, f"q{i}") for i in range(n))
            )
        )
    else:
        for i in range(n):
            result.calls.append(await stream_once(stubs[i % len(stubs)], answer, f"q{i}"))
    result.wall = time.perf_counter() - started
    return result


# Issue #19, item 5: seconds to the first event under load, at p50 and p99.
GOAL_P50, GOAL_P99 = 0.5, 2.0


def goal_line(p: Phase) -> str:
    firsts = p.firsts()
    p50, p99 = percentile(firsts, 50), percentile(firsts, 99)
    errors = sum(p.errors().values())
    met = p50 <= GOAL_P50 and p99 <= GOAL_P99 and not errors and len(firsts) == len(p.calls)
    return (
        f"goal (first event p50 <= {GOAL_P50} s, p99 <= {GOAL_P99} s, no error): "
        f"{'met' if met else 'NOT met'} (p50 {p50:.3f} s, p99 {p99:.3f} s, {errors} errors)"
    )


def format_phase(arrangement: str, p: Phase, base: Phase | None) -> str:
    firsts, texts, ends = p.firsts(), p.texts(), p.ends()
    errors = ", ".join(f"{k} {v}" for k, v in p.errors().items()) or "0"
    ratio = ""
    if base is not None and base.firsts() and firsts and ends and base.ends():
        first_ratio = statistics.median(firsts) / statistics.median(base.firsts())
        end_ratio = statistics.median(ends) / statistics.median(base.ends())
        ratio = f"{first_ratio:>7.1f}x {end_ratio:>6.2f}x"
    return (
        f"{arrangement:<6} {p.name:<10} {len(p.calls):>5} "
        f"{percentile(firsts, 50):>7.3f} {percentile(firsts, 99):>7.3f} "
        f"{percentile(texts, 50):>7.3f} {percentile(texts, 99):>7.3f} "
        f"{percentile(ends, 50):>7.3f} {percentile(ends, 99):>7.3f} {p.wall:>7.1f} "
        f"{errors:>8} {ratio}"
    )


HEADER = (
    f"{'arr.':<6} {'phase':<10} {'calls':>5} {'1st p50':>7} {'1st p99':>7} "
    f"{'txt p50':>7} {'txt p99':>7} {'end p50':>7} {'end p99':>7} {'wall':>7} {'errors':>8} "
    f"{'1st/base':>8} {'end/base':>7}"
)


async def arrangement(
    name: str, env: dict[str, str], logs: Path, args: argparse.Namespace, answer: str
) -> None:
    stack = Stack(ARRANGEMENTS[name], env, logs, args.code)
    channels = [
        grpc.aio.insecure_channel(stack.address, options=[("grpc.channel_id", i)])
        for i in range(CHANNELS)
    ]
    stubs = [agent_pb2_grpc.AgentServiceStub(c) for c in channels]
    try:
        await stack.ready(channels[0])
        await asyncio.sleep(2)  # a worker that cannot start has exited by now
        stack.check_alive()
        await phase("warm-up", stubs, answer, 5, parallel=False)
        base = await phase("baseline", stubs, answer, args.baseline, parallel=False)
        print(format_phase(name, base, None), flush=True)
        for round_ in range(1, args.rounds + 1):
            load_before = os.getloadavg()[0]
            label = f"{args.streams}x" + (f" #{round_}" if args.rounds > 1 else "")
            cpu_before = stack.cpu_seconds()
            loaded = await phase(label, stubs, answer, args.streams, parallel=True)
            cpu = {r: s - cpu_before.get(r, 0.0) for r, s in stack.cpu_seconds().items()}
            print(format_phase(name, loaded, base), flush=True)
            print(f"{'':<6} {goal_line(loaded)}", flush=True)
            if wrong := [c.run_id for c in loaded.calls if c.error == "text differs"][:3]:
                print(f"{'':<6} text differs in runs {', '.join(wrong)} (see the logs)", flush=True)
            stack.check_alive()
            peaks = ", ".join(f"{r} {mb:.0f} MB" for r, mb in stack.peak_rss_mb().items())
            print(
                f"{'':<6} peak RSS: {peaks}; load average {load_before:.1f} before the "
                f"{args.streams}, {os.getloadavg()[0]:.1f} after",
                flush=True,
            )
            used = ", ".join(f"{r} {s:.2f} s" for r, s in cpu.items())
            print(f"{'':<6} CPU during the {args.streams}: {used}", flush=True)
    finally:
        for channel in channels:
            await channel.close()
        stack.stop()


def commit_of(code: Path) -> str:
    """The checkout's commit (with `+changes` when its tree differs from it)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(code), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(code), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return commit + ("+changes" if dirty else "")


def process_env(tmp: Path, ep: EmbeddedEndpoints, model: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(
        DATABASE_URL=ep.database_url or "",
        REDIS_URL=ep.redis_url or "",
        TEMPORAL_ADDRESS=ep.temporal_address or "",
        LOOMWORK_HOME=str(tmp / "loomwork"),
        LOOMWORK_SECRET_KEY="bench-load-secret-key",
        LOOMWORK_TOKENS="bench=bench",
        LOOMWORK_TOOL_MODULES="load_app",
        OPENAI_BASE_URL=model,
        OPENAI_API_KEY="x",
        LOOMWORK_CHAT_MODEL="scripted",
        COLUMNS="200",
    )
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, default=200, help="concurrent Stream calls")
    parser.add_argument("--baseline", type=int, default=20, help="calls one at a time")
    parser.add_argument(
        "--arrangements", nargs="+", choices=list(ARRANGEMENTS), default=["up", "split"]
    )
    parser.add_argument("--token-delay", type=float, default=0.02, help="seconds per chunk")
    parser.add_argument("--words", type=int, default=60, help="words in each answer")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="loaded phases one after the other (the first meets a process that has served "
        "calls only one at a time: its connection pools small; later ones, pools grown)",
    )
    parser.add_argument(
        "--code",
        type=Path,
        default=ROOT,
        help="the checkout whose Loomwork the processes run (default: this one)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args()
    answer = " ".join(f"word{i}" for i in range(args.words))
    tmp = Path(tempfile.mkdtemp(prefix="loomwork-load-"))
    logs = tmp / "logs"
    logs.mkdir()
    stack = EmbeddedStack(tmp / "home", temporal_ui=False)
    endpoints = stack.start()
    # The model in a process of its own: its streaming does not compete with the clients'.
    port = pick_free_port(set())
    model = multiprocessing.Process(
        target=serve_model, args=(answer, args.token_delay, port), daemon=True
    )
    model.start()
    env = process_env(tmp, endpoints, f"http://127.0.0.1:{port}/v1")
    print(
        f"Loomwork from {args.code} at {commit_of(args.code)}; {os.cpu_count()} cores; load"
        f" average {os.getloadavg()[0]:.1f} at start; logs in {logs}",
        flush=True,
    )
    print(HEADER, flush=True)
    try:
        for name in args.arrangements:
            asyncio.run(arrangement(name, env, logs, args, answer))
    finally:
        model.terminate()
        model.join()
        stack.stop()
        shutil.rmtree(tmp / "home", ignore_errors=True)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
