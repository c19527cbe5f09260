"""``python -m tokenward.testing``: serve the emulator until Ctrl-C (demos, multi-process tests).

The first line on stdout starts with the base URL (a parent process reads its first word),
followed by the test client id, secret and API key: test values a person needs to talk to it,
not secrets.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from tokenward.testing import TEST_API_KEY, TEST_CLIENT_ID, TEST_CLIENT_SECRET
from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tokenward.testing", description="Run the tokenward provider emulator."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--client-id", default=TEST_CLIENT_ID)
    parser.add_argument("--client-secret", default=TEST_CLIENT_SECRET)
    parser.add_argument("--api-key", default=TEST_API_KEY)
    parser.add_argument("--access-lifetime", type=float, default=3600)
    args = parser.parse_args(argv)

    emulator = Emulator()
    emulator.access_lifetime = args.access_lifetime
    emulator.add_client(args.client_id, args.client_secret)
    emulator.add_api_key(args.api_key)
    # Ctrl-C and SIGTERM only set `done`, from before the URL is printed: a parent that gets
    # the URL, uses the emulator and interrupts it at once must find the handler in place.
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    server = EmulatorServer(emulator, host=args.host, port=args.port).start()
    try:
        print(
            f"{server.url} client_id={args.client_id} client_secret={args.client_secret} "
            f"api_key={args.api_key}",
            flush=True,
        )
        print(
            f"emulator at {server.url}: token endpoint {server.token_url}, API {server.api_url}; "
            "test values, not secrets. Ctrl-C stops it.",
            file=sys.stderr,
        )
        while not done.wait(0.5):  # a timed wait lets the signal handler run promptly
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
