"""Loomwork's typed async client (`LoomworkClient`), message builders and error details.

from clients import LoomworkClient, text_message
"""

from clients.agents import StreamedText
from clients.client import DEFAULT_ADDRESS, LoomworkClient
from clients.errors import error_details, rich_status
from clients.messages import (
    parse_role,
    role_name,
    text_message,
    tool_call_message,
    tool_result_message,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "LoomworkClient",
    "StreamedText",
    "error_details",
    "parse_role",
    "rich_status",
    "role_name",
    "text_message",
    "tool_call_message",
    "tool_result_message",
]
