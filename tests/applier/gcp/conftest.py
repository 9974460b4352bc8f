"""The GCP provider's test world (`tests.cloud_support`): the stdlib fake GCE on 127.0.0.1 for
the whole session, reset per test; an sshd on 127.0.0.1 standing in for every instance; real
google-cloud-compute (with anonymous credentials at the override endpoint) and paramiko. The
fake EC2 is here too, for failover from one cloud to the other."""

from __future__ import annotations

import pytest

from tests.cloud_support.fixtures import (  # noqa: F401
    aws,
    client_key,
    fake_ec2,
    fake_gce,
    gcp,
    sshd,
)
from tests.cloud_support.worlds import GcpWorld


@pytest.fixture
def world(gcp: GcpWorld) -> GcpWorld:  # noqa: F811
    return gcp
