"""boto3 for the AWS provider: clients with retries set on purpose, EC2 errors translated into
Skyform's, and the regional things Skyform owns or looks up (zone ids, image, key pair,
security group), each created idempotently and cached per region.

Retries: botocore's own are off (`total_max_attempts: 1`). In its default legacy mode a capacity
error (HTTP 500 InsufficientInstanceCapacity) is retried 5 times, about 9 s, before failover can
even start, and standard mode still retries every 500. So `call` retries only throttling and
service hiccups itself, with capped exponential backoff and jitter, and raises TransientError
once its budget is spent; capacity and quota errors surface at once, as CapacityError.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import boto3
import botocore.exceptions
from botocore.config import Config

from applier.provider import Placement
from schema.errors import CapacityError, ProviderError, TransientError

CAPACITY = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientCapacity",
        "SpotMaxPriceTooLow",
        "Unsupported",
    }
)
QUOTA = frozenset({"InstanceLimitExceeded", "VcpuLimitExceeded", "MaxSpotInstanceCountExceeded"})
THROTTLE = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "ServiceUnavailable",
        "Unavailable",
        "InternalError",
    }
)
AUTH = frozenset({"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "OptInRequired"})
QUOTA_HINT = (
    "request a higher limit in the Service Quotas console (EC2: 'Running On-Demand ... "
    "instances' or 'All ... Spot Instance Requests', in vCPUs) for {region}, or let Skyform "
    "fail over to another region or cloud"
)
SG_NAME = "skyform"
CALL_ATTEMPTS = 6
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0


def make_client(region: str) -> Any:
    """An EC2 client for `region` from the user's normal chain (profile, env, SSO, role);
    `AWS_ENDPOINT_URL(_EC2)` is honoured by botocore itself."""
    config = Config(
        retries={"mode": "standard", "total_max_attempts": 1},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=50,
    )
    return boto3.session.Session().client("ec2", region_name=region, config=config)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def translate(exc: Exception, region: str, placement: Placement | None = None) -> Exception:
    """The Skyform error for an SDK error (raise it `from exc`)."""
    code = error_code(exc)
    message = str(exc)
    if code in QUOTA:
        hint = QUOTA_HINT.format(region=region)
        return CapacityError(
            f"AWS quota reached in {region} ({code}): {message}; {hint}", placement
        )
    if code in CAPACITY:
        where = placement.describe() if placement else region
        return CapacityError(f"AWS has no capacity for {where} ({code}): {message}", placement)
    if code in THROTTLE:
        return TransientError(f"AWS is throttling requests in {region} ({code})", 2.0)
    if code in AUTH or isinstance(exc, botocore.exceptions.NoCredentialsError):
        return ProviderError(
            f"AWS refused the credentials ({code or 'none found'}): {message}; run "
            "`aws configure` or set AWS_PROFILE, and check the IAM permissions for EC2"
        )
    if isinstance(
        exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectionError
    ):
        return TransientError(f"cannot reach AWS in {region}: {message}", 5.0)
    return ProviderError(f"AWS {region}: {message}")


def call(
    fn: Callable[..., Any],
    region: str,
    placement: Placement | None = None,
    attempts: int = CALL_ATTEMPTS,
    ok_codes: frozenset[str] = frozenset(),
    **kwargs: Any,
) -> Any:
    """One EC2 call; throttling is retried here with backoff, everything else is translated.
    An error whose code is in `ok_codes` (e.g. a duplicate on an idempotent create) is None."""
    for attempt in range(attempts):
        try:
            return fn(**kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            if error_code(exc) in ok_codes:
                return None
            err = translate(exc, region, placement)
            if not isinstance(err, TransientError) or attempt + 1 == attempts:
                raise err from exc
            # Full jitter, so parallel launches that were throttled together spread out.
            time.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)))
    raise AssertionError("unreachable")


class Region:
    """One region's client and what Skyform looked up or created there (cached)."""

    def __init__(self, name: str, client: Any) -> None:
        self.name = name
        self.client = client
        self._lock = threading.Lock()
        self._zones: dict[str, str] | None = None
        self._group: str | None = None
        self._keys: dict[str, str] = {}
        self._images: dict[bool, str] = {}

    def call(
        self,
        method: str,
        placement: Placement | None = None,
        ok_codes: frozenset[str] = frozenset(),
        **kwargs: Any,
    ) -> Any:
        return call(getattr(self.client, method), self.name, placement, ok_codes=ok_codes, **kwargs)

    def zones(self) -> dict[str, str]:
        """Zone id (`use1-az1`, as the catalog names zones) -> zone name (`us-east-1b`)."""
        with self._lock:
            if self._zones is None:
                found = self.call("describe_availability_zones")["AvailabilityZones"]
                self._zones = {
                    z["ZoneId"]: z["ZoneName"] for z in found if z.get("State") == "available"
                }
            return dict(self._zones)

    def zone_name(self, zone: str) -> str:
        """A zone id or name -> the zone name RunInstances takes."""
        zones = self.zones()
        if zone in zones.values():
            return zone
        if zone not in zones:
            raise ProviderError(f"AWS {self.name} has no available zone {zone!r}")
        return zones[zone]

    def zone_id(self, name: str) -> str:
        return next((i for i, n in self.zones().items() if n == name), name)

    def key_pair(self, public_line: str) -> str:
        """Skyform's key pair here, named by its fingerprint so two homes never clash."""
        name = "skyform-" + hashlib.sha256(public_line.split()[1].encode()).hexdigest()[:12]
        with self._lock:
            if name in self._keys:
                return name
            found = self.call(
                "describe_key_pairs",
                ok_codes=frozenset({"InvalidKeyPair.NotFound"}),
                KeyNames=[name],
            )
            if found is None:  # another launch may import it meanwhile: a duplicate is fine
                self.call(
                    "import_key_pair",
                    ok_codes=frozenset({"InvalidKeyPair.Duplicate"}),
                    KeyName=name,
                    PublicKeyMaterial=public_line.encode(),
                )
            self._keys[name] = name
        return name

    def security_group(self, ports: Sequence[tuple[int, int]]) -> str:
        """The `skyform` group in the default VPC: SSH, the given port ranges (first, last),
        and the group itself."""
        with self._lock:
            if self._group is None:
                self._group = self._find_or_create_group()
                self._authorize(self._group, [_tcp(22, 22), _self(self._group)])
            if ports:
                self._authorize(self._group, [_tcp(lo, hi) for lo, hi in ports])
            return self._group

    def _find_or_create_group(self) -> str:
        vpcs = self.call("describe_vpcs", Filters=[_f("is-default", "true")])["Vpcs"]
        if not vpcs:
            raise ProviderError(
                f"AWS {self.name} has no default VPC; create one with "
                f"`aws ec2 create-default-vpc --region {self.name}`"
            )
        vpc = vpcs[0]["VpcId"]
        filters = [_f("group-name", SG_NAME), _f("vpc-id", vpc)]
        found = self.call("describe_security_groups", Filters=filters)["SecurityGroups"]
        if found:
            return str(found[0]["GroupId"])
        made = self.call(
            "create_security_group",
            ok_codes=frozenset({"InvalidGroup.Duplicate"}),  # another launch won the race
            GroupName=SG_NAME,
            Description="Skyform: SSH and service ports of Skyform's instances",
            VpcId=vpc,
        )
        if made is not None:
            return str(made["GroupId"])
        found = self.call("describe_security_groups", Filters=filters)["SecurityGroups"]
        return str(found[0]["GroupId"])

    def _authorize(self, group: str, permissions: list[dict[str, Any]]) -> None:
        for perm in permissions:  # one by one: a duplicate fails the whole request
            self.call(
                "authorize_security_group_ingress",
                ok_codes=frozenset({"InvalidPermission.Duplicate"}),
                GroupId=group,
                IpPermissions=[perm],
            )

    def owned(self, skyform_id: str | None, address: str | None) -> list[dict[str, Any]]:
        """Skyform's instances here (all states): one paginated DescribeInstances by tag."""
        filters = [_f("tag-key", "skyform-id")]
        if skyform_id:
            filters.append(_f("tag:skyform-id", skyform_id))
        if address:
            filters.append(_f("tag:skyform-address", address))
        out: list[dict[str, Any]] = []
        token = None
        while True:
            extra: dict[str, Any] = {"NextToken": token} if token else {}
            page = self.call("describe_instances", Filters=filters, MaxResults=500, **extra)
            out += [i for r in page["Reservations"] for i in r["Instances"]]
            token = page.get("NextToken")
            if not token:
                return out

    def by_ids(self, ids: list[str]) -> list[dict[str, Any]]:
        """The instances by id; an id EC2 no longer (or not yet) knows is simply absent."""
        out = []
        for instance_id in ids:  # one by one: one unknown id fails a batched call
            page = self.call(
                "describe_instances",
                ok_codes=frozenset({"InvalidInstanceID.NotFound"}),
                InstanceIds=[instance_id],
            )
            out += [i for r in (page or {}).get("Reservations", []) for i in r["Instances"]]
        return out

    def terminate(self, ids: list[str]) -> None:
        """Tag, then terminate; instances already gone are fine."""
        if not ids:
            return
        missing = frozenset({"InvalidInstanceID.NotFound", "IncorrectInstanceState"})
        tag = [{"Key": "skyform-terminated", "Value": "true"}]
        self.call("create_tags", ok_codes=missing, Resources=ids, Tags=tag)
        self.call("terminate_instances", ok_codes=missing, InstanceIds=ids)

    def image(self, gpu: bool, settings: Mapping[str, Any]) -> str:
        """The image to boot: `image_id` from the settings, else the newest Ubuntu 22.04
        (the Deep Learning base image with NVIDIA drivers for GPU instances)."""
        if settings.get("image_id"):
            return str(settings["image_id"])
        with self._lock:
            if gpu not in self._images:
                self._images[gpu] = self._newest_image(gpu)
            return self._images[gpu]

    def _newest_image(self, gpu: bool) -> str:
        if gpu:
            owner, pattern = (
                "amazon",
                "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)*",
            )
        else:
            owner, pattern = (
                "099720109477",
                "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*",
            )
        images = self.call(
            "describe_images",
            Owners=[owner],
            Filters=[_f("name", pattern), _f("state", "available")],
        )["Images"]
        if not images:
            raise ProviderError(
                f"no image matching {pattern!r} in AWS {self.name}; set `image_id` for aws"
            )
        return str(max(images, key=lambda i: i.get("CreationDate", ""))["ImageId"])


def _f(name: str, *values: str) -> dict[str, Any]:
    return {"Name": name, "Values": list(values)}


def _tcp(lo: int, hi: int) -> dict[str, Any]:
    return {
        "IpProtocol": "tcp",
        "FromPort": lo,
        "ToPort": hi,
        "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
    }


def _self(group: str) -> dict[str, Any]:
    return {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]}


def credentials_problem() -> str | None:
    """Why boto3 finds no credentials (None when it finds some); never calls AWS."""
    try:
        creds = boto3.session.Session().get_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        return f"AWS credentials could not be loaded: {exc}; run `aws configure` or set AWS_PROFILE"
    if creds is None:
        return "no AWS credentials found; run `aws configure` or set AWS_PROFILE"
    return None
