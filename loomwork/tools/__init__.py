"""Tools an agent may call: `@tool` functions, their context, and the registry that runs them.

```python
from pydantic import BaseModel
from loomwork.tools import ToolContext, tool

class ForecastArgs(BaseModel):
    city: str

@tool(description="Weather forecast for a city.")
async def get_forecast(args: ForecastArgs, ctx: ToolContext) -> dict: ...
```
"""

from loomwork.retries import RetryPolicy
from loomwork.tools.decorator import tool, tool_of
from loomwork.tools.registry import Tool, ToolRegistry
from loomwork.tools.tool_context import ToolContext

__all__ = ["RetryPolicy", "Tool", "ToolContext", "ToolRegistry", "tool", "tool_of"]
