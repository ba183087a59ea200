"""The built-in `rag_query` tool: an agent searches one of its tenant's RAG indexes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from loomwork.rag.models import RetrievalOptions, SearchMode
from loomwork.rag.query import Retriever
from loomwork.tools import Tool, ToolContext

RAG_QUERY_TOOL = "rag_query"


class RagQueryArgs(BaseModel):
    index_name: str = Field(description="The RAG index to search", min_length=1, max_length=64)
    query: str = Field(description="What to look for, in natural language", min_length=1)
    top_k: int = Field(default=5, ge=1, le=20, description="How many passages to return")
    hybrid: bool = Field(default=True, description="Also match exact keywords (full text)")


def rag_query_tool(retriever: Retriever) -> Tool:
    """A tool returning the best passages with their chunk ids, titles and pages."""

    async def run(args: RagQueryArgs, ctx: ToolContext) -> dict[str, Any]:
        options = RetrievalOptions(
            top_k=args.top_k, mode=SearchMode.HYBRID if args.hybrid else SearchMode.VECTOR
        )
        results, _ = await retriever.search(ctx.tenant, args.index_name, args.query, options)
        return {
            "results": [
                {
                    "chunk_id": r.chunk.id,
                    "document_id": r.chunk.document_id,
                    "title": r.title,
                    "page": r.chunk.page,
                    "heading_path": r.chunk.heading_path,
                    "score": round(r.score, 4),
                    "text": r.chunk.text,
                }
                for r in results
            ]
        }

    return Tool(
        RAG_QUERY_TOOL,
        "Search a document index (RAG) of this tenant and return the most relevant passages.",
        RagQueryArgs,
        run,
    )
