"""Serving replicas: the HTTP load balancer, the readiness prober and the autoscaler's decisions.

Each piece stands alone (no provider, no store): the local provider and plan execution wire them
together. Semantics and defaults follow SkyServe (SkyPilot 0.14.1).
"""
