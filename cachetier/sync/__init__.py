"""
Single-flight downloads from the origin into the store.

L{fill} is one download as its readers see it, L{download} one origin
transfer and the resources it owns, L{admission} the caps and the memory
of failures, L{flights} the fill each name's requests join, L{syncer}
the registry that ties them together, and L{outcomes} what it answers.
"""

from .fill import Fill, Follower
from .outcomes import FileStatus, Lookup, OriginHealth, Outcome
from .syncer import Syncer

__all__ = ["FileStatus", "Fill", "Follower", "Lookup", "OriginHealth", "Outcome", "Syncer"]
