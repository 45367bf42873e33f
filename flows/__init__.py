"""Prefect flows over the freecp library; ``prefect.yaml`` at the project root deploys them.

Each task calls one library function, so everything here is also reachable from the ``freecp``
command. The library's stores are the only cache: tasks do not keep a second copy of results.
"""
