"""SkyPilot-compatible task models, the YAML loader with file:line:col, addresses and error types.

Nothing here imports another Skyform package.
"""
