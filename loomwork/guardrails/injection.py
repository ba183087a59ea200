"""Prompt-injection rules: phrases that try to override an agent's instructions or make
it reveal them."""

from __future__ import annotations

import re

from loomwork.guardrails.processors import ProcessorContext, Tripwire

_RULES = [
    r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}\b(?:previous|prior|above|earlier|"
    r"all|your|the system)\b[^.\n]{0,20}\b(?:instructions?|prompts?|rules|directions)\b",
    r"\byou are now\b[^.\n]{0,40}\b(?:unrestricted|jailbroken|dan|free of|without)\b",
    r"\b(?:developer|god|jailbreak|dan) mode\b",
    r"\b(?:reveal|print|show|repeat|output|leak)\b[^.\n]{0,30}\b(?:system prompt|hidden "
    r"instructions|your instructions|initial prompt)\b",
    r"\bnew instructions?\s*:",
    r"<\|?(?:im_start|system)\|?>",
]
PATTERNS = [re.compile(rule, re.IGNORECASE) for rule in _RULES]


def injection_phrase(text: str) -> str | None:
    """The first phrase of `text` that matches a rule, or None."""
    for pattern in PATTERNS:
        match = pattern.search(text)
        if match is not None:
            return match.group(0)
    return None


class InjectionRules:
    """The rule half of the `prompt_injection` processor."""

    name = "prompt_injection"
    uses_model = False

    async def process(self, text: str, ctx: ProcessorContext) -> str:
        phrase = injection_phrase(text)
        if phrase is not None:
            raise Tripwire(f"looks like a prompt injection: {phrase[:120]!r}")
        return text
