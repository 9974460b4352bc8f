"""Executing plans: the `Provider` protocol, the providers (local, kubernetes, aws, gcp), failover.

Cloud SDKs are imported only inside their own module under `applier/providers/`.
"""
