"""
The origin: requests through an injected treq client (L{client}), down a
stack of agents that follow redirects within the origin and sign
(L{agents}); what an answer says (L{response}) and how its body is read
(L{body}); the lifetimes its headers allow (L{freshness}), and the breaker
and retries that protect it (L{breaker}).  L{upstreams} picks, per name,
the shield (L{shields}) a fill asks before the origin.
"""

from .agents import IdentityAgent
from .breaker import Breaker, RetryPolicy
from .client import Origin
from .freshness import parse_cache_control
from .response import OriginResponse
from .upstreams import Upstreams

__all__ = [
    "Breaker",
    "IdentityAgent",
    "Origin",
    "OriginResponse",
    "RetryPolicy",
    "Upstreams",
    "parse_cache_control",
]
