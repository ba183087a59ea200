"""Loomwork's tests: by flow, against real servers started once per session."""

import os

# Before anything imports grpc (conftest does): tests start subprocesses (embedded servers,
# worker processes) from a process full of gRPC threads; gRPC's fork handlers can abort
# such a child before it execs. See server/__init__.py.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
