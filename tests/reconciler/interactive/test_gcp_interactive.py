"""`skyform exec`, `ssh`, `ssh-config` and `port-forward` on a GCP cluster, and autostop counting
that use (`tests.cloud_support.interactive`, which AWS runs too): a two-node cluster launched by
the GCP provider against the fake GCE, whose instances all resolve to a private sshd on
127.0.0.1 (`tests/gcp_support`, `tests/aws_support/sshd.py`), reached through the `skyform` CLI
as its own process and through Debian's OpenSSH client with the generated config."""

from __future__ import annotations

from tests.cloud_support.fixtures import client_key, fake_gce, sshd  # noqa: F401
from tests.cloud_support.interactive import *  # noqa: F403
from tests.cloud_support.interactive import interactive_world_of
from tests.cloud_support.worlds import GcpWorld

interactive_world = interactive_world_of(GcpWorld)
