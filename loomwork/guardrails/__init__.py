"""Guardrail processors of agents: built-in ones (PII redaction, prompt injection,
moderation, token and tool-call limits) and `@processor` functions.

```python
from loomwork.guardrails import ProcessorContext, processor, trip

@processor
def no_secrets(text: str, ctx: ProcessorContext) -> str | None:
    "Stops a run whose text mentions the launch code."
    if "launch code" in text.lower():
        raise trip("mentions the launch code")
    return None  # unchanged (return a string to rewrite the text)
```
"""

from loomwork.guardrails.custom import CustomProcessor, ProcessorRegistry, processor, processor_of
from loomwork.guardrails.processors import ProcessorContext, Tripped, Tripwire, trip
from loomwork.guardrails.settings import (
    CustomProcessorRef,
    InputTokenLimit,
    ModerationCheck,
    PiiPattern,
    PiiRedaction,
    ProcessorConfig,
    PromptInjectionCheck,
    ToolCallLimit,
)

__all__ = [
    "CustomProcessor",
    "CustomProcessorRef",
    "InputTokenLimit",
    "ModerationCheck",
    "PiiPattern",
    "PiiRedaction",
    "ProcessorConfig",
    "ProcessorContext",
    "ProcessorRegistry",
    "PromptInjectionCheck",
    "ToolCallLimit",
    "Tripped",
    "Tripwire",
    "processor",
    "processor_of",
    "trip",
]
