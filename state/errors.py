"""Errors only the state store raises; each subclasses `SkyformError` and says what to do next."""

from __future__ import annotations

from schema.errors import SkyformError


class StateError(SkyformError):
    """The store cannot be opened or used as asked (bad URL, unreachable server, missing row)."""


class StateVersionError(StateError):
    """The store was written by a newer Skyform: upgrading Skyform is the only fix."""


class StateDocumentError(StateError):
    """A state document is malformed, or refused on import (older serial, other lineage)."""


class LockLostError(StateError):
    """The caller's lease is gone (expired and taken, or force-unlocked): stop writing, re-plan."""
