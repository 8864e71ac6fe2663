"""
cachetier: a pull-through cache tier for large static media, on Twisted.
"""

__version__ = "0.1.0"
