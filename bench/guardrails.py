"""Guardrail processors with no model (PII redaction in and out, the input-token and
tool-call limits) against the same agent without processors, measured in the same run.

    .venv/bin/python bench/guardrails.py [--runs 30] [--steps 2000]

1. The processors' own work per model step, alone (no servers): the input processors over
   a six-message conversation (~2 KB, with an email, a phone and a card number to redact),
   the token limit (counted with the real tokenizer), then an 800-character answer
   streamed in 8-character chunks through the stream guard, its final check and the
   tool-call limit; against the same loop with no processors (the deltas passed through).
   Paired rounds, p50 µs per step. Goal: ≤ 1 ms per step.
2. End to end: `Generate` of a two-step run (a tool call, then the answer) of an agent with
   those processors, against the same agent without them; each call on an idle service,
   the two interleaved; p50 ms per run, the ratio, and the difference per step.

The scripted model runs on a thread of this process. Part 2 starts embedded Postgres, Valkey
and Temporal in a temporary home.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripted_settings import scripted_settings
from timing import paired_us

from loomwork.config import Settings
from loomwork.guardrails.pipeline import Guardrails, build_guardrails
from loomwork.guardrails.processors import ProcessorContext
from loomwork.guardrails.settings import InputTokenLimit, PiiRedaction, ToolCallLimit
from loomwork.llm.chat import ChatMessage
from loomwork.memory.tokens import count_context_tokens
from loomwork.testing import ChatRequest, ScriptedModelServer, ScriptedToolCall, Turn
from protos.loomwork.v1 import agent_pb2, agent_pb2_grpc, guardrails_pb2, run_pb2
from server.embedded import EmbeddedStack
from server.runtime import Runtime
from server.temporal import register_search_attributes
from server.transport.grpc_app import build_grpc_app
from server.worker import build_worker

AUTH = (("authorization", "Bearer bench"),)
IDLE_PAUSE = 0.1
PROMPT_PII = "Mail me at dana.lee@example.com or call +1 415-555-0132."
SENTENCE = "The quarterly report covers revenue, costs and the hiring plan for next year. "
ANSWER = (SENTENCE * 11)[:800]
CONVERSATION = [
    ChatMessage.system("You are a helpful assistant for the finance team."),
    ChatMessage.user(SENTENCE * 4 + PROMPT_PII),
    ChatMessage.assistant(SENTENCE * 3),
    ChatMessage.user(SENTENCE * 4 + "My card is 4111 1111 1111 1111."),
    ChatMessage.assistant(SENTENCE * 3),
    ChatMessage.user(SENTENCE * 3 + "What should we cut?"),
]
CTX = ProcessorContext(tenant="t", run_id="r", agent_name="a", stage="input", step=2)


def guarded(max_tokens: int = 100_000) -> Guardrails:
    return build_guardrails(
        [PiiRedaction(), InputTokenLimit(max_tokens=max_tokens)],
        [PiiRedaction(), ToolCallLimit(max_calls=50)],
        None,
        default_model="",
        chat_model=None,
    )


async def one_step(rails: Guardrails) -> str:
    """What a model step does around the model call, with these guardrails."""
    seen = await rails.check_input(CONVERSATION, CTX)
    guard = rails.output_guard(CTX)
    out = []
    for i in range(0, len(ANSWER), 8):
        out.append(await guard.add(ANSWER[i : i + 8]))
    out.append(await guard.finish(ANSWER))
    rails.check_tool_calls(seen, 0)
    return "".join(out)


async def processors_alone(steps: int) -> None:
    rails, none = guarded(), Guardrails()
    count_context_tokens(CONVERSATION)  # the tokenizer loaded

    async def ours() -> None:
        await one_step(rails)

    async def base() -> None:
        await one_step(none)

    g, b, ratio = await paired_us(ours, base, steps)
    print("1. the processors' own work per model step (PII in and out, both limits), p50")
    print(
        f"  with processors {g:7.1f} µs   without {b:6.1f} µs   added {g - b:7.1f} µs per step"
        f"  (ratio {ratio:.1f}×; goal ≤ 1000 µs added: {'met' if g - b <= 1000 else 'missed'})"
    )
    # A token limit close to the prompt's size: the prompt's tokens are counted exactly.
    tight = guarded(max_tokens=count_context_tokens(CONVERSATION) + 50)

    async def counted() -> None:
        await one_step(tight)

    t, b, _ = await paired_us(counted, base, steps // 4)
    print(
        f"  the same with a token limit near the prompt's size (counted exactly each step):"
        f" added {t - b:7.1f} µs per step"
    )


def script(request: ChatRequest) -> Turn:
    if request.tool_results:
        return Turn(text=ANSWER)
    return Turn(tool_calls=[ScriptedToolCall("word_count", {"text": "count these words"})])


def _agents() -> list[agent_pb2.Agent]:
    P = guardrails_pb2.GuardrailProcessor
    pii = P(pii_redaction=guardrails_pb2.PiiRedaction())
    return [
        agent_pb2.Agent(name="plain", instructions="plain", tool_names=["word_count"]),
        agent_pb2.Agent(
            name="guarded",
            instructions="guarded",
            tool_names=["word_count"],
            input_processors=[
                pii,
                P(input_token_limit=guardrails_pb2.InputTokenLimit(max_tokens=100_000)),
            ],
            output_processors=[
                pii,
                P(tool_call_limit=guardrails_pb2.ToolCallLimit(max_calls=50)),
            ],
        ),
    ]


async def end_to_end(settings: Settings, runs: int) -> None:
    runtime = await Runtime.open(settings)
    await register_search_attributes(runtime.temporal, settings.temporal_namespace)
    worker = build_worker(runtime)
    app = build_grpc_app(runtime, "127.0.0.1:0")
    await app.start()
    async with worker, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        agents = agent_pb2_grpc.AgentServiceStub(channel)
        for agent in _agents():
            await agents.CreateAgent(agent_pb2.CreateAgentRequest(agent=agent), metadata=AUTH)

        def generate(agent: str) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                prompt = SENTENCE * 4 + PROMPT_PII
                request = agent_pb2.GenerateRequest(agent_name=agent, prompt=prompt)
                run = (await agents.Generate(request, metadata=AUTH)).run
                assert run.status == run_pb2.RUN_STATUS_SUCCEEDED, run
                assert run.output.steps == 2 and run.output.text == ANSWER

            return call

        async def timed(call: Callable[[], Awaitable[None]]) -> float:
            await asyncio.sleep(IDLE_PAUSE)
            started = time.perf_counter()
            await call()
            return (time.perf_counter() - started) * 1000

        with_rails, plain = generate("guarded"), generate("plain")
        await with_rails()
        await plain()
        g_ms: list[float] = []
        p_ms: list[float] = []
        for _ in range(runs):
            g_ms.append(await timed(with_rails))
            p_ms.append(await timed(plain))
    await app.stop(0)
    await runtime.close()
    g, p = statistics.median(g_ms), statistics.median(p_ms)
    print(f"2. end to end: Generate of a two-step run, idle service, {runs} runs each, p50")
    print(
        f"  with processors {g:6.1f} ms   without {p:6.1f} ms   ratio {g / p:4.2f}×"
        f"   difference per step {(g - p) / 2:+5.2f} ms (noise: p10–p90 below)"
    )
    print(f"    spread: with {_deciles(g_ms)}, without {_deciles(p_ms)}")


def _deciles(samples: list[float]) -> str:
    deciles = statistics.quantiles(samples, n=10)
    return f"{deciles[0]:.1f}–{deciles[-1]:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=2000)
    args = parser.parse_args()
    asyncio.run(processors_alone(args.steps))
    with tempfile.TemporaryDirectory(prefix="loomwork-bench-") as tmp:
        stack = EmbeddedStack(Path(tmp), temporal_ui=False)
        endpoints = stack.start()
        model = ScriptedModelServer(script)
        try:
            settings = scripted_settings(endpoints, model.start_in_thread(), home=Path(tmp))
            asyncio.run(end_to_end(settings, args.runs))
        finally:
            model.stop_in_thread()
            stack.stop()


if __name__ == "__main__":
    main()
