"""The pure planner: catalog, optimizer (placement), diff, Plan types, policies, renderers.

No I/O, no clock, no randomness, no printing: the same inputs give the same plan bytes.
"""
