"""Sources obtain tokens: OAuth2 grants, API-key exchange, or user code. Sans-I/O."""

from .apikey import ApiKeyExchange
from .base import HttpSource, Source
from .function import FunctionSource, TokenFunction
from .oauth2 import ClientCredentialsGrant, RefreshTokenGrant, parse_token_response

__all__ = [
    "ApiKeyExchange",
    "ClientCredentialsGrant",
    "FunctionSource",
    "HttpSource",
    "RefreshTokenGrant",
    "Source",
    "TokenFunction",
    "parse_token_response",
]
