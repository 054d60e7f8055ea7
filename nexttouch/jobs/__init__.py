"""Orchestration: the jobs that wire the stages together (plan, demo, nightly, ingest, what-if).

The only layer above features/, training/ and serving/; the core (the rest of nexttouch/) imports none of them.
"""
