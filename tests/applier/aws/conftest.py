"""The AWS provider's test world (`tests.cloud_support`): moto (with injected faults) on
127.0.0.1 for the whole session, reset per test; an sshd on 127.0.0.1 standing in for every
instance; real boto3 and paramiko."""

from __future__ import annotations

import pytest

from tests.cloud_support.fixtures import aws, client_key, fake_ec2, sshd  # noqa: F401
from tests.cloud_support.worlds import AwsWorld


@pytest.fixture
def world(aws: AwsWorld) -> AwsWorld:  # noqa: F811
    return aws
