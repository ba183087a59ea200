"""Loomwork's domain: agents, tools, memory, RAG, LLM, storage and cache.

Plain async Python with no gRPC and no Temporal imports, so it can be tested
and reused alone; `server/`, `workflows/` and `activities/` build on it.
"""
