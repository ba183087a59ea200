"""The offline model: a small rule-based script for the scripted model server, so demo mode
works with no API key and no network. It is not a language model: it adds numbers with the
`add` tool, counts words with `word_count`, asks for `send_email` when told to email
someone, calls a tool it is told to use ("use the X tool") with no arguments, answers RAG
questions from their first source, and otherwise echoes."""

from __future__ import annotations

import json
import re

from loomwork.testing import ChatRequest, ScriptedModelServer, ScriptedToolCall, Turn

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
_USE_TOOL = re.compile(r"\buse the ([A-Za-z0-9_-]{1,64}) tool\b", re.IGNORECASE)


_FIRST_SOURCE = re.compile(r"\n\[1\] \([^\n]*\)\n(.+?)(?:\n\n\[\d+\] \(|\Z)", re.DOTALL)
_SENTENCE = re.compile(r"^(.+?[.!?])(?:\s|$)", re.DOTALL)


def _answer_from_context(request: ChatRequest) -> str | None:
    """A retrieval-augmented question (numbered context in the system message): answer with
    the first sentence of the best source, cited, as a real model is asked to."""
    system = request.messages[0] if request.messages else {}
    content = system.get("content") if system.get("role") == "system" else None
    if not isinstance(content, str) or "Context:" not in content:
        return None
    found = _FIRST_SOURCE.search(content)
    if found is None:
        return "I do not know: the context does not say."
    # The source's own words, without its Markdown headings ("# Looms").
    lines = [line for line in found.group(1).splitlines() if not line.lstrip().startswith("#")]
    source = " ".join(" ".join(lines).split())
    sentence = _SENTENCE.match(source)
    return f"{(sentence.group(1) if sentence else source)} [1]"


def offline_turn(request: ChatRequest) -> Turn:
    """Answer one chat request: call a tool when the question needs one, then use its result."""
    last = request.messages[-1] if request.messages else {}
    if last.get("role") == "tool":
        result = last.get("content") or ""
        try:
            value = json.loads(result)
        except ValueError:
            value = result
        if isinstance(value, dict) and "sum" in value:
            return Turn(text=f"The sum is {value['sum']:g}.", chunk_size=4)
        if isinstance(value, dict) and value.get("sent"):
            return Turn(text=f"Done: the email to {value.get('to')} is sent.", chunk_size=4)
        if "rejected" in str(value):
            return Turn(text="Understood, I did not send it.", chunk_size=4)
        if isinstance(value, dict) and "words" in value:
            return Turn(text=f"That text has {value['words']} words.", chunk_size=4)
        return Turn(text=f"The tool answered: {result}", chunk_size=4)
    cited = _answer_from_context(request)
    if cited is not None:
        return Turn(text=cited, chunk_size=4)
    prompt = request.last_user_text
    address = _EMAIL.search(prompt)
    if "send_email" in request.tool_names and address and "email" in prompt.lower():
        body = prompt.split(":", 1)[1].strip() if ":" in prompt else prompt
        arguments = {"to": address.group(0), "subject": "A note from Loomwork", "body": body}
        return Turn(tool_calls=[ScriptedToolCall("send_email", arguments)])
    named = _USE_TOOL.search(prompt)
    if named and named.group(1) in request.tool_names:  # e.g. a client tool the caller runs
        return Turn(tool_calls=[ScriptedToolCall(named.group(1), {})])
    numbers = [float(n) for n in _NUMBER.findall(prompt)]
    if "add" in request.tool_names and len(numbers) >= 2:
        return Turn(tool_calls=[ScriptedToolCall("add", {"numbers": numbers})])
    if "word_count" in request.tool_names and "count" in prompt.lower() and ":" in prompt:
        text = prompt.split(":", 1)[1].strip()
        return Turn(tool_calls=[ScriptedToolCall("word_count", {"text": text})])
    return Turn(text=f"(offline model) You said: {prompt}", chunk_size=4)


OFFLINE_MODEL = "offline"


def offline_model_server() -> ScriptedModelServer:
    """A scripted model server answering with `offline_turn` (not started yet)."""
    return ScriptedModelServer(offline_turn, model=OFFLINE_MODEL)
