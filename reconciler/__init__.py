"""The outer layer: the `skyform` CLI, the reconcile daemon, the git source, schedules and HTTP.

Nothing imports this package.
"""
