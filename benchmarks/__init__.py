"""
Measurements of cachetier on loopback.  Never part of CI.
"""
