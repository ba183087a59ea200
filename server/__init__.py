"""Loomwork's processes: the gRPC server, the Temporal worker, the CLI and the embedded stack."""

import os

# We never fork a process that goes on using gRPC; without this, gRPC's fork handlers run on
# every subprocess start and can abort the child before it execs.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
