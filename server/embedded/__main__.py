"""``python -m server.embedded [HOME]``: run the embedded stack alone until Ctrl-C, printing
its URLs."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from server.embedded.errors import EmbeddedError
from server.embedded.stack import EmbeddedStack


@contextlib.contextmanager
def _sigterm_as_keyboard_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Start the stack on HOME (default: $LOOMWORK_HOME or ./.loomwork), stop it on Ctrl-C."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print("usage: python -m server.embedded [HOME]   (default: $LOOMWORK_HOME or ./.loomwork)")
        return 0
    home = Path(args[0] if args else os.environ.get("LOOMWORK_HOME", ".loomwork"))
    stack = EmbeddedStack(home, on_progress=lambda line: print(line, flush=True))
    with _sigterm_as_keyboard_interrupt():
        try:
            ep = stack.start()
        except EmbeddedError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        try:
            print(f"DATABASE_URL={ep.database_url}")
            print(f"REDIS_URL={ep.redis_url}")
            print(f"TEMPORAL_ADDRESS={ep.temporal_address}")
            print(f"Temporal UI: {ep.temporal_ui_url}")
            print("Ctrl-C to stop", flush=True)
            while not stack.lost:  # a server that died is started again, unless it cannot be
                time.sleep(1)
        except KeyboardInterrupt:
            print("stopping...", flush=True)
        finally:
            try:
                stack.stop()
            except EmbeddedError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
    for name, why in stack.lost.items():
        print(f"error: {name} died and could not be started again ({why})", file=sys.stderr)
    return 1 if stack.lost else 0


if __name__ == "__main__":
    sys.exit(main())
