"""`skyform exec`, `ssh`, `ssh-config` and `port-forward` on an AWS cluster, and autostop counting
that use (`tests.cloud_support.interactive`, which GCP runs too): a two-node cluster launched by
the AWS provider against the fake EC2, whose instances all resolve to a private sshd on
127.0.0.1, reached through the `skyform` CLI as its own process and through Debian's OpenSSH
client with the generated config."""

from __future__ import annotations

from tests.cloud_support.fixtures import client_key, fake_ec2, sshd  # noqa: F401
from tests.cloud_support.interactive import *  # noqa: F403
from tests.cloud_support.interactive import interactive_world_of
from tests.cloud_support.worlds import AwsWorld

interactive_world = interactive_world_of(AwsWorld)
