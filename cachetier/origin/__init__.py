"""
The origin: requests through an injected treq client (L{client}), the
lifetimes its headers allow (L{freshness}), and the breaker and retries
that protect it (L{breaker}).
"""

from .breaker import Breaker, RetryPolicy
from .client import IdentityAgent, Origin, OriginResponse
from .freshness import parse_cache_control

__all__ = [
    "Breaker",
    "IdentityAgent",
    "Origin",
    "OriginResponse",
    "RetryPolicy",
    "parse_cache_control",
]
