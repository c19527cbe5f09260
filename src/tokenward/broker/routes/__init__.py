"""The broker's routes, one `APIRouter` per resource (`broker.app` includes them in this order):

    ops.py            GET /healthz, /readyz, /metrics (public)
    credentials.py    GET /v1/credentials, POST /v1/credentials/{name}/refresh
    tokens.py         POST /v1/credentials/{name}/token (token vending)
    proxy.py          ANY /v1/proxy/{credential}/{path} (the credential proxy)
    sessions.py       POST /v1/sessions, keepalive, DELETE, GET /v1/client.js
    session_proxy.py  ANY /v1/sessions/{session_id}/proxy/{path} (the session-bound proxy)
    examples.py       the example pages (only with `examples = true`)

`deps.py` holds what they share: the authenticated client and the broker state as
dependencies, and the one way of registering a route per proxied method.
"""
