"""The conversation an agent run on a thread starts with: its input saved to the thread
(unless the run's memory is read-only), working memory, messages recalled by meaning and
the recent ones, trimmed to the agent's token limit."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from loomwork.agents.definitions import AgentDefinition
from loomwork.agents.run_models import AgentRunRequest, ContextUsage
from loomwork.agents.speculation import until_confirmed
from loomwork.llm.chat import ChatMessage
from loomwork.memory.context_assembly import assemble_context
from loomwork.memory.models import RecallHit, RecallQuery, RecallScope
from loomwork.memory.recall import MessageRecall
from loomwork.memory.settings import MemorySettings
from loomwork.memory.threads import Memory
from loomwork.memory.working import WorkingMemoryStore
from loomwork.messages import Message, Role


async def thread_context(
    memory: Memory,
    recall_index: MessageRecall,
    working_memory: WorkingMemoryStore,
    request: AgentRunRequest,
    agent: AgentDefinition,
) -> tuple[list[ChatMessage], ContextUsage]:
    """The run's conversation and how much of the context it used (`request` has a thread)."""
    settings = agent.memory
    inputs = request.identified_inputs()
    if agent.memory_read_only:
        page = (
            await memory.list_messages(
                request.tenant, request.thread_id, last_n=settings.last_messages
            )
            if settings.last_messages
            else None
        )
        now = datetime.now(UTC)
        stored = [
            Message(
                id=m.id,
                thread_id=request.thread_id,
                role=m.role,
                parts=m.parts,
                create_time=now,
            )
            for m in inputs
        ]
        recent = [*(page.messages if page else []), *stored]
    else:
        await until_confirmed()  # a speculative step writes once its run exists
        stored = await memory.append_messages(request.tenant, request.thread_id, inputs)
        page = await memory.list_messages(
            request.tenant, request.thread_id, last_n=max(settings.last_messages, len(stored))
        )
        recent = page.messages
    recalled: list[RecallHit] = []
    query = "\n".join(m.text for m in stored if m.role is Role.USER).strip()
    if settings.semantic_recall is not None and query:
        recall = settings.semantic_recall
        by_resource = recall.scope is RecallScope.RESOURCE and bool(request.resource_id)
        recalled = await recall_index.search(
            request.tenant,
            RecallQuery(
                query=query,
                scope=RecallScope.RESOURCE if by_resource else RecallScope.THREAD,
                thread_id=request.thread_id,
                resource_id=request.resource_id,
                top_k=recall.top_k,
                message_range=recall.message_range,
                min_score=recall.min_score,
            ),
        )
    if not agent.memory_read_only:
        # Indexed after the search, so the input does not recall itself.
        await recall_index.index(request.tenant, request.thread_id, stored)
    system, working = agent.instructions, None
    if settings.working_memory is not None:
        system, working = await _working_memory(working_memory, request, agent, settings)
    context = assemble_context(
        system=system,
        working_memory=working,
        recalled=recalled,
        recent=recent,
        token_limit=settings.context_token_limit,
    )
    conversation = [ChatMessage(role=m.role, parts=m.parts) for m in context.messages]
    usage = ContextUsage(
        tokens_in_context=context.tokens_in_context,
        messages_recalled=context.messages_recalled,
        messages_trimmed=context.messages_trimmed,
        tokens_trimmed=context.tokens_trimmed,
    )
    return conversation, usage


async def _working_memory(
    working_memory: WorkingMemoryStore,
    request: AgentRunRequest,
    agent: AgentDefinition,
    settings: MemorySettings,
) -> tuple[str, str]:
    """The instructions that say how to keep the working memory, and its current text."""
    wm = settings.working_memory
    assert wm is not None
    by_resource = wm.scope is RecallScope.RESOURCE and bool(request.resource_id)
    current = await working_memory.get(
        request.tenant,
        RecallScope.RESOURCE if by_resource else RecallScope.THREAD,
        thread_id=request.thread_id,
        resource_id=request.resource_id,
    )
    if agent.memory_read_only:
        how = "This is your working memory (read-only in this conversation)."
        text = current.markdown or wm.template or json.dumps(current.data or {})
    elif wm.template is not None:
        text = current.markdown or wm.template
        how = "Keep it current with the update_working_memory tool (send `markdown`)."
    else:
        text = json.dumps(current.data or {}, ensure_ascii=False)
        how = (
            "Keep it current with the update_working_memory tool (send `data` matching "
            f"this JSON schema: {json.dumps(wm.json_schema)})."
        )
    return f"{agent.instructions}\n\n{how}", text
