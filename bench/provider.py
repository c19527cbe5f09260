"""The provider emulator in its own process, driven over stdin/stdout (one JSON line each way).

`python bench/provider.py '<settings json>'` prints `{"url": ..., "client_id": ...,
"client_secret": ...}`, then answers commands: `login` (a new refresh token family),
`counters`, `valid <refresh token>`, `quit`. A separate process keeps the emulator's CPU and
GIL away from the clients being measured. Secrets travel over the pipe only, never to a log.
"""

from __future__ import annotations

import json
import secrets
import sys

from tokenward.testing.emulator import Emulator
from tokenward.testing.server import EmulatorServer


def main(argv: list[str]) -> int:
    settings = json.loads(argv[1]) if len(argv) > 1 else {}
    emulator = Emulator(**settings)
    client_id, client_secret = "bench-app", secrets.token_urlsafe(24)
    emulator.add_client(client_id, client_secret)
    with EmulatorServer(emulator) as server:
        hello = {"url": server.url, "client_id": client_id, "client_secret": client_secret}
        print(json.dumps(hello), flush=True)
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            answer: object
            if command == "login":
                answer = emulator.issue_refresh_token(client_id)
            elif command == "counters":
                answer = emulator.counters
            elif command == "valid":
                answer = bool(arg) and emulator.is_refresh_token_valid(arg)
            elif command == "quit":
                break
            else:
                answer = {"error": f"unknown command {command!r}"}
            print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
