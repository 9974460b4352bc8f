"""The state store: the `Store` protocol with SQLite (default) and PostgreSQL implementations;
resources, serial and lineage, locks, intent journal, plan/apply history, blocked placements.
"""
