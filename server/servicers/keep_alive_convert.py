"""A relay's keep-alive as the StreamKeepAlive of every run's event stream."""

from __future__ import annotations

from protos.loomwork.v1 import run_pb2
from server.servicers.relay import KeepAlive, RunLiveness
from server.servicers.well_known_convert import set_timestamp

LIVENESS_TO_PROTO = {
    RunLiveness.OPEN: run_pb2.RUN_LIVENESS_OPEN,
    RunLiveness.CLOSED: run_pb2.RUN_LIVENESS_CLOSED,
    RunLiveness.UNKNOWN: run_pb2.RUN_LIVENESS_UNKNOWN,
}


def keep_alive_to_proto(keep_alive: KeepAlive) -> run_pb2.StreamKeepAlive:
    out = run_pb2.StreamKeepAlive(
        last_event_id=keep_alive.last_event_id, liveness=LIVENESS_TO_PROTO[keep_alive.liveness]
    )
    set_timestamp(out.time, keep_alive.time)
    return out
