"""moto's EC2 in process on 127.0.0.1, behind a thin WSGI layer that injects what moto cannot
simulate, on the wire as real EC2 sends it (so botocore parses and retries it as in production):

- capacity errors (HTTP 500 InsufficientInstanceCapacity, or a quota code) for RunInstances by
  instance type and zone name, a number of times or forever;
- throttling (HTTP 503 RequestLimitExceeded) of every n-th call of an action;
- spot reclaims, vanished instances and older launch times, by changing moto's in-process
  state (the documented hook: moto has no API for these).
"""

from __future__ import annotations

import datetime
import io
import logging
import threading
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends
from moto.ec2.models.instances import StateReason
from moto.moto_server.threaded_moto_server import MotoRequestHandler
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

from tests.cloud_support.served import Served

ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error></Errors><RequestID>skyform-fake</RequestID></Response>"
)


@dataclass
class CapacityFault:
    instance_type: str | None = None
    zone: str | None = None  # a zone name (us-east-1a); None: every zone
    code: str = "InsufficientInstanceCapacity"
    times: int | None = None  # None: forever

    def matches(self, params: dict[str, str]) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.instance_type and params.get("InstanceType") != self.instance_type:
            return False
        return not self.zone or params.get("Placement.AvailabilityZone") == self.zone


@dataclass
class Faults:
    capacity: list[CapacityFault] = field(default_factory=list)
    throttle_every: dict[str, int] = field(default_factory=dict)  # action -> every n-th call
    counts: Counter[str] = field(default_factory=Counter)
    run_calls: list[dict[str, str]] = field(default_factory=list)  # every RunInstances tried
    throttled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def clear(self) -> None:
        with self.lock:
            self.capacity.clear()
            self.throttle_every.clear()
            self.counts.clear()
            self.run_calls.clear()
            self.throttled = 0

    def check(self, action: str, params: dict[str, str]) -> tuple[int, str, str] | None:
        """(HTTP status, code, message) to answer instead of moto, or None."""
        with self.lock:
            self.counts[action] += 1
            every = self.throttle_every.get(action)
            if every and self.counts[action] % every == 0:
                self.throttled += 1
                return 503, "RequestLimitExceeded", "Request limit exceeded."
            if action != "RunInstances":
                return None
            self.run_calls.append(params)
            for fault in self.capacity:
                if fault.matches(params):
                    if fault.times is not None:
                        fault.times -= 1
                    status = 500 if fault.code == "InsufficientInstanceCapacity" else 400
                    return status, fault.code, f"fake {fault.code} for {params['InstanceType']}"
        return None


class FakeEc2(Served):
    """Start with `start()`; point boto3 at `endpoint`; `stop()` at the end."""

    def __init__(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.faults = Faults()
        self._moto = DomainDispatcherApplication(create_backend_app)
        self._serve(
            make_server(
                "127.0.0.1", 0, self._app, threaded=True, request_handler=MotoRequestHandler
            )
        )

    def reset(self) -> None:
        """Forget every instance, key pair and group (moto's reset) and every fault."""
        self.faults.clear()
        req = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST")
        urllib.request.urlopen(req, timeout=10).close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        params = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(errors="replace")).items()}
        fault = self.faults.check(params.get("Action", ""), params)
        if fault is not None:
            status, code, message = fault
            start_response(f"{status} Fault", [("Content-Type", "text/xml")])
            return [ERROR.format(code=code, message=message).encode()]
        environ["wsgi.input"] = io.BytesIO(body)  # moto reads the body again
        result: Iterable[bytes] = self._moto(environ, start_response)
        return result

    # ---- what moto has no API for ---------------------------------------------------------

    @staticmethod
    def _backend(region: str) -> Any:
        return ec2_backends[DEFAULT_ACCOUNT_ID][region]

    def reclaim_spot(self, region: str, instance_id: str) -> None:
        """AWS takes a spot instance back: terminated, with the spot state reason."""
        instance = self._backend(region).get_instance(instance_id)
        instance.terminate()
        instance.state_reason = StateReason(
            "Server.SpotInstanceTermination: Spot instance termination",
            "Server.SpotInstanceTermination",
        )

    def vanish(self, region: str, instance_id: str) -> None:
        """The instance is no longer listed at all (AWS forgets terminated ones)."""
        for reservation in self._backend(region).reservations.values():
            reservation.instances = [i for i in reservation.instances if i.id != instance_id]

    def age(self, region: str, instance_id: str, seconds: float) -> None:
        """The instance was launched `seconds` earlier than it was."""
        instance = self._backend(region).get_instance(instance_id)
        instance.launch_time -= datetime.timedelta(seconds=seconds)
