"""tokenward: keeps API credentials alive.

Proactive refresh before expiry, exactly one refresh per expiry across threads, event loops and
processes, one replay of a request that met an expired-token answer, rotated refresh tokens
persisted before use, and secrets that never reach a log.

    import httpx2
    from tokenward import RefreshTokenGrant, TokenAuth, TokenManager

    manager = TokenManager("ml", RefreshTokenGrant(token_url, client_id, client_secret))
    client = httpx2.Client(auth=TokenAuth(manager))
"""

from .credential import Credential, credential
from .errors import (
    CredentialNotSeeded,
    LeaseTimeout,
    MalformedTokenResponse,
    ManagerClosed,
    ReauthorizationRequired,
    RefreshFailed,
    RequestRejected,
    StoreCorrupted,
    StoreError,
    TokenwardError,
)
from .integrations.httpx import TokenAuth
from .integrations.sdk import ExpiryGuard
from .manager import RefreshPolicy, TokenManager
from .retry import RetryPolicy
from .rules import ExpiryRule
from .sessions import Sessions
from .sources import (
    ApiKeyExchange,
    ClientCredentialsGrant,
    FunctionSource,
    RefreshTokenGrant,
    Source,
)
from .token import Token

__version__ = "0.1.0"

__all__ = [
    "ApiKeyExchange",
    "ClientCredentialsGrant",
    "Credential",
    "CredentialNotSeeded",
    "ExpiryGuard",
    "ExpiryRule",
    "FunctionSource",
    "LeaseTimeout",
    "MalformedTokenResponse",
    "ManagerClosed",
    "ReauthorizationRequired",
    "RefreshFailed",
    "RefreshPolicy",
    "RefreshTokenGrant",
    "RequestRejected",
    "RetryPolicy",
    "Sessions",
    "Source",
    "StoreCorrupted",
    "StoreError",
    "Token",
    "TokenAuth",
    "TokenManager",
    "TokenwardError",
    "__version__",
    "credential",
]
