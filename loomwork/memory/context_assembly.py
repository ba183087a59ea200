"""Context assembly: what of memory an agent's model call sees, within a token budget.

`assemble_context` is pure (no I/O): the caller fetches the recent messages
(`Memory.list_messages(last_n=...)`), the recall hits (`MessageRecall.search`) and the
working memory, and gets back the messages to send plus usage metrics.

Order: one system message (the system prompt, then the working memory as a section
of it), then the recalled messages — hits and their neighbours, deduplicated against
each other and against the recent messages, in time order (`create_time`, then id) —
then the recent messages in their order.

Tool exchanges stay whole: an assistant message with tool calls and the tool messages
answering it form one unit, kept or dropped together. A tool result whose call is not
in the context, and a tool call that is not answered before a later message, cannot
be sent to a model (the Chat Completions API rejects both), so such messages are left
out and counted in `messages_unpaired`; a still unanswered tool call at the very end
is kept. The caller should fetch recent messages back to the start of a trailing tool
exchange.

Trimming to `token_limit` (tokens as in `loomwork.memory.tokens`, reply priming
included) drops whole units from the front: recalled ones first, oldest first, then
recent ones, oldest first. The system message is never dropped, nor the unit holding
the newest recent message; if those alone exceed the limit, `InvalidArgument` on
`context_token_limit` says how many tokens they need.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from loomwork.errors import InvalidArgument
from loomwork.llm.chat import ChatMessage
from loomwork.memory.models import RecallHit
from loomwork.memory.tokens import REPLY_PRIMING, count_message_tokens
from loomwork.messages import Message, Role, ToolCallPart, ToolResultPart

__all__ = ["WORKING_MEMORY_HEADING", "AssembledContext", "assemble_context"]

WORKING_MEMORY_HEADING = "## Working memory"
LIMIT_FIELD = "context_token_limit"


class AssembledContext(BaseModel):
    """The messages to send (a leading system `ChatMessage`, if any, then stored
    `Message`s) and what assembling them did.

    `tokens_in_context`: prompt tokens of `messages`, reply priming included.
    `system_tokens`: of those, the system message's (with its per-message overhead).
    `messages_recalled`: distinct recalled messages (hits and neighbours) not among the
    recent ones, before trimming. `messages_trimmed` / `tokens_trimmed`: what the token
    limit dropped. `messages_unpaired`: tool calls/results left out for lacking their pair.
    """

    messages: list[ChatMessage | Message] = Field(default_factory=list)
    tokens_in_context: int = 0
    system_tokens: int = 0
    messages_recalled: int = 0
    messages_trimmed: int = 0
    tokens_trimmed: int = 0
    messages_unpaired: int = 0


def assemble_context(
    *,
    system: str | None,
    working_memory: str | None,
    recalled: Sequence[RecallHit],
    recent: Sequence[Message],
    token_limit: int | None,
) -> AssembledContext:
    """The context for one model call; see the module docstring for the rules."""
    if token_limit is not None and token_limit < 1:
        raise InvalidArgument.field(LIMIT_FIELD, "must be at least 1 (or unset: unlimited)")

    head = _system_message(system, working_memory)
    head_tokens = count_message_tokens(head) if head is not None else 0
    base_tokens = REPLY_PRIMING + head_tokens

    seen = {m.id for m in recent}
    recalled_messages: list[Message] = []
    for hit in recalled:
        for message in (hit.message, *hit.context):
            if message.id not in seen:
                seen.add(message.id)
                recalled_messages.append(message)
    recalled_messages.sort(key=lambda m: (m.create_time, m.id))

    units, unpaired = _units([*recalled_messages, *recent])
    costs = [sum(count_message_tokens(m) for m in unit) for unit in units]
    newest = recent[-1].id if recent else None
    protected = 1 if units and newest is not None and units[-1][-1].id == newest else 0

    total = base_tokens + sum(costs)
    dropped = 0
    if token_limit is not None:
        if base_tokens > token_limit:
            raise InvalidArgument.field(
                LIMIT_FIELD,
                f"the system prompt and working memory alone need {base_tokens} tokens "
                f"(reply priming included), more than the limit of {token_limit}",
            )
        while total > token_limit and dropped < len(units) - protected:
            total -= costs[dropped]
            dropped += 1
        if total > token_limit:
            raise InvalidArgument.field(
                LIMIT_FIELD,
                f"the system prompt and working memory ({base_tokens} tokens, reply priming "
                f"included) and the newest message ({costs[-1]} tokens) need {total} tokens, "
                f"more than the limit of {token_limit}",
            )

    messages: list[ChatMessage | Message] = [head] if head is not None else []
    for unit in units[dropped:]:
        messages.extend(unit)
    return AssembledContext(
        messages=messages,
        tokens_in_context=total,
        system_tokens=head_tokens,
        messages_recalled=len(recalled_messages),
        messages_trimmed=sum(len(unit) for unit in units[:dropped]),
        tokens_trimmed=sum(costs[:dropped]),
        messages_unpaired=len(unpaired),
    )


def _system_message(system: str | None, working_memory: str | None) -> ChatMessage | None:
    sections: list[str] = []
    if system and system.strip():
        sections.append(system)
    if working_memory and working_memory.strip():
        sections.append(f"{WORKING_MEMORY_HEADING}\n\n{working_memory}")
    return ChatMessage.system("\n\n".join(sections)) if sections else None


def _call_ids(message: Message) -> set[str]:
    if message.role is not Role.ASSISTANT:
        return set()
    return {p.tool_call_id for p in message.parts if isinstance(p, ToolCallPart)}


def _result_ids(message: Message) -> set[str]:
    return {p.tool_call_id for p in message.parts if isinstance(p, ToolResultPart)}


def _units(sequence: list[Message]) -> tuple[list[list[Message]], list[Message]]:
    """Split into units kept or dropped whole; also return the unpaired messages left out."""
    units: list[list[Message]] = []
    unpaired: list[Message] = []
    i = 0
    while i < len(sequence):
        message = sequence[i]
        calls = _call_ids(message)
        if calls:
            group = [message]
            answered: set[str] = set()
            j = i + 1
            while (
                j < len(sequence)
                and sequence[j].role is Role.TOOL
                and _result_ids(sequence[j]) <= calls
            ):
                group.append(sequence[j])
                answered |= _result_ids(sequence[j])
                j += 1
            if answered >= calls or j == len(sequence):
                units.append(group)
            else:
                unpaired.extend(group)
            i = j
        elif message.role is Role.TOOL:
            unpaired.append(message)
            i += 1
        else:
            units.append([message])
            i += 1
    return units, unpaired
