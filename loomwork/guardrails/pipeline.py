"""An agent's guardrails at work in one model step: the input processors over the messages
the model is about to see, the output processors over what it streams and answers, and
the limits (input tokens, tool calls per run). Plain functions of their inputs: they may
run in the model-step activity (as they do) or anywhere else."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from loomwork.guardrails.custom import ProcessorRegistry
from loomwork.guardrails.injection import InjectionRules
from loomwork.guardrails.model_checks import ModelCheck
from loomwork.guardrails.pii import PiiProcessor
from loomwork.guardrails.processors import (
    ProcessorContext,
    Stage,
    TextProcessor,
    Tripped,
    Tripwire,
)
from loomwork.guardrails.settings import (
    CustomProcessorRef,
    InputTokenLimit,
    ModerationCheck,
    PiiRedaction,
    ProcessorConfig,
    PromptInjectionCheck,
    ToolCallLimit,
)
from loomwork.llm.chat import ChatMessage, ChatModel, to_openai_messages
from loomwork.memory.tokens import REPLY_PRIMING, TOKENS_PER_MESSAGE, count_context_tokens
from loomwork.messages import Role, TextPart, ToolCallPart, ToolResultPart


@dataclass
class Guardrails:
    """One agent's processors, built for a step."""

    inputs: list[TextProcessor] = field(default_factory=list)
    outputs: list[TextProcessor] = field(default_factory=list)
    max_input_tokens: int | None = None
    max_tool_calls: int | None = None

    @property
    def empty(self) -> bool:
        return not (self.inputs or self.outputs) and (
            self.max_input_tokens is None and self.max_tool_calls is None
        )

    async def check_input(
        self, messages: Sequence[ChatMessage], ctx: ProcessorContext
    ) -> list[ChatMessage]:
        """The messages as the model may see them: each user message's text and each
        string tool result through the input processors in order (those asking a model: on
        step 1 only, on the user's messages), then the token limit. Raises Tripped."""
        if not self.inputs and self.max_input_tokens is None:
            return list(messages)
        seen = [await self._message(m, ctx) for m in messages]
        if self.max_input_tokens is not None and most_tokens(seen) > self.max_input_tokens:
            tokens = count_context_tokens(seen)
            if tokens > self.max_input_tokens:
                raise Tripped(
                    "input_token_limit",
                    f"the prompt has {tokens} tokens, more than {self.max_input_tokens}",
                    "input",
                )
        return seen

    async def _message(self, message: ChatMessage, ctx: ProcessorContext) -> ChatMessage:
        if message.role not in (Role.USER, Role.TOOL) or not self.inputs:
            return message
        parts = []
        changed = False
        for part in message.parts:
            if isinstance(part, TextPart):
                text = await run_processors(self.inputs, part.text, ctx, user=True)
                new: TextPart | ToolResultPart | ToolCallPart = (
                    part if text == part.text else TextPart(text=text)
                )
            elif isinstance(part, ToolResultPart) and isinstance(part.result, str):
                text = await run_processors(self.inputs, part.result, ctx, user=False)
                new = part if text == part.result else part.model_copy(update={"result": text})
            else:
                new = part
            changed = changed or new is not part
            parts.append(new)
        return ChatMessage(role=message.role, parts=parts) if changed else message

    def check_tool_calls(self, conversation: Sequence[ChatMessage], asked: int) -> None:
        """Trip when the run's tool calls (those of the conversation's earlier steps, plus
        `asked` so far in this one) pass the limit."""
        if self.max_tool_calls is None:
            return
        earlier = sum(
            1
            for m in conversation
            if m.role is Role.ASSISTANT
            for p in m.parts
            if isinstance(p, ToolCallPart)
        )
        if earlier + asked > self.max_tool_calls:
            raise Tripped(
                "tool_call_limit",
                f"the model asked for tool call {earlier + asked} of the run; the limit is"
                f" {self.max_tool_calls}",
                "output",
            )

    def output_guard(self, ctx: ProcessorContext) -> OutputGuard:
        return OutputGuard(self.outputs, ctx)


def most_tokens(messages: Sequence[ChatMessage]) -> int:
    """An upper bound of `count_context_tokens`: a token is at least one byte of what is
    sent, so a prompt this many bytes long cannot pass a limit above it (no need to count)."""
    total = REPLY_PRIMING
    for sent in to_openai_messages(messages):
        total += TOKENS_PER_MESSAGE + len(sent["role"]) + len((sent.get("content") or "").encode())
        for call in sent.get("tool_calls") or ():
            function = call["function"]
            total += len(function["name"].encode()) + len(function["arguments"].encode())
    return total


async def run_processors(
    processors: Sequence[TextProcessor], text: str, ctx: ProcessorContext, *, user: bool = True
) -> str:
    """`text` through each processor in order; a Tripwire becomes Tripped (with the name).
    Model-based ones run on the final answer (output) or on step 1's user text (input)."""
    for each in processors:
        if each.uses_model:
            if ctx.stage == "output" and not ctx.final:
                continue
            if ctx.stage == "input" and (ctx.step != 1 or not user):
                continue
        try:
            text = await each.process(text, ctx)
        except Tripwire as wire:
            raise Tripped(each.name, wire.reason, ctx.stage) from None
    return text


class OutputGuard:
    """Streamed text through the output processors, held back by a lookahead window.

    Each check runs the processors over the step's whole text so far and releases what
    they return minus its last `WINDOW` characters: a pattern cut between chunks is seen
    whole before any of it goes out, and a trip releases nothing more (text after the
    tripping words never reaches the client, as long as they are shorter than the window).
    Checks run once `stride` new characters arrived (an eighth of the text, at least 32),
    so a long answer costs O(n log n) processor work; the price is latency: up to
    WINDOW + stride characters wait. A rewrite that reaches back past the window cannot
    take back text already released. With a model-based processor, all is held until the
    final answer is checked."""

    WINDOW = 64
    MIN_STRIDE = 32

    def __init__(self, processors: Sequence[TextProcessor], ctx: ProcessorContext) -> None:
        self._processors = list(processors)
        self._ctx = replace(ctx, stage="output", final=False)
        self._hold_all = any(p.uses_model for p in processors)
        self._text = ""  # the model's own text so far
        self._released = ""  # what went out (processed)
        self._checked = 0  # length of the text at the last check
        self.final_text = ""

    @property
    def active(self) -> bool:
        return bool(self._processors)

    async def add(self, delta: str) -> str:
        """Take a delta; the text that may go out now ('' while held)."""
        if not self._processors:
            return delta
        self._text += delta
        stride = max(self.MIN_STRIDE, len(self._text) // 8)
        if self._hold_all or len(self._text) - self._checked < stride:
            return ""
        self._checked = len(self._text)
        processed = await run_processors(self._processors, self._text, self._ctx)
        return self._release(processed[: max(0, len(processed) - self.WINDOW)])

    async def settle(self) -> str:
        """Check and release everything so far (the model moved on to tool calls)."""
        if not self._processors or self._hold_all:
            return ""
        self._checked = len(self._text)
        processed = await run_processors(self._processors, self._text, self._ctx)
        return self._release(processed)

    async def finish(self, text: str) -> str:
        """Check the final answer (`text`, the model's whole text); what is left to go out.
        `final_text` is then the answer as processed."""
        if not self._processors:
            self.final_text = text
            return ""
        ctx = replace(self._ctx, final=True)
        self.final_text = await run_processors(self._processors, text, ctx)
        return self._release(self.final_text)

    def _release(self, processed: str) -> str:
        if len(processed) <= len(self._released):
            return ""
        out = processed[len(self._released) :]
        self._released = processed
        return out


def build_guardrails(
    inputs: Sequence[ProcessorConfig],
    outputs: Sequence[ProcessorConfig],
    registry: ProcessorRegistry | None,
    *,
    default_model: str,
    chat_model: Callable[[str], ChatModel] | None,
) -> Guardrails:
    """The processors of an agent's configuration; a custom one the registry does not know
    (a worker without the module) trips when it would run."""
    built = Guardrails()

    def processor(config: ProcessorConfig, stage: Stage) -> list[TextProcessor]:
        if isinstance(config, PiiRedaction):
            return [PiiProcessor(config)]
        if isinstance(config, PromptInjectionCheck):
            found: list[TextProcessor] = [InjectionRules()]
            if config.use_model and chat_model is not None:
                found.append(ModelCheck.injection(config, default_model, chat_model))
            return found
        if isinstance(config, ModerationCheck) and chat_model is not None:
            return [ModelCheck.moderation(config, default_model, chat_model)]
        if isinstance(config, CustomProcessorRef):
            custom = registry.find(config.name) if registry is not None else None
            return [custom if custom is not None else _Missing(config.name)]
        if isinstance(config, InputTokenLimit) and stage == "input":
            built.max_input_tokens = config.max_tokens
        if isinstance(config, ToolCallLimit) and stage == "output":
            built.max_tool_calls = config.max_calls
        return []

    for config in inputs:
        built.inputs += processor(config, "input")
    for config in outputs:
        built.outputs += processor(config, "output")
    return built


@dataclass
class _Missing:
    """A custom processor this worker does not have: it fails closed."""

    name: str
    uses_model: bool = False

    async def process(self, text: str, ctx: ProcessorContext) -> str:
        raise Tripwire(f"processor {self.name!r} is not defined on this worker")
