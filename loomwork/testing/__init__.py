"""What tests (and the demo's offline model) reuse: the scripted OpenAI-compatible model server.

Production code never imports this package (an import-linter contract says so).

    from loomwork.testing import ScriptedModelServer, ScriptedToolCall, Turn
"""

from loomwork.testing.model_server import ScriptedModelServer
from loomwork.testing.pseudo_embeddings import pseudo_embedding
from loomwork.testing.script import (
    ChatRequest,
    Delay,
    EmbeddingRequest,
    Failure,
    ScriptedToolCall,
    ScriptFunction,
    ScriptItem,
    Turn,
    Usage,
    echo,
)

__all__ = [
    "ChatRequest",
    "Delay",
    "EmbeddingRequest",
    "Failure",
    "ScriptFunction",
    "ScriptItem",
    "ScriptedModelServer",
    "ScriptedToolCall",
    "Turn",
    "Usage",
    "echo",
    "pseudo_embedding",
]
