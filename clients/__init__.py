"""Loomwork's typed async client (`LoomworkClient`), message builders and error details.

from clients import LoomworkClient, text_message
"""

from clients.agents import StreamedText, client_tool
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
    "client_tool",
    "error_details",
    "parse_role",
    "rich_status",
    "role_name",
    "text_message",
    "tool_call_message",
    "tool_result_message",
]
