"""
The cluster: nodes that share one purge log and know each other, through
Redis (see "Cluster" in docs/architecture.rst).
"""
