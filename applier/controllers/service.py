"""The service controller process: `python -m applier.controllers.service <dir>` keeps one
service's replicas and load balancer alive after `skyform apply` has exited (SkyServe's
controller). The logic is `service_core.ServiceController`; this module is the process around it.

What it does, every `spec.poll_seconds`:
- the load balancer listens on 127.0.0.1:`spec.lb_port` (the same port after a restart);
- replicas are launched on the first candidate placement with room (failover on capacity,
  every try kept in `attempts`), each on a free port with the Skyform id
  `<digest8>-<service id>-v<version>-r<replica id>`, so a restarted controller adopts them;
- each replica is probed (`readiness_probe`); READY ones are what the balancer serves;
  a replica whose process is gone, or that the prober gave up on, is terminated and replaced;
- the autoscaler gets the balancer's request timestamps and its decision is carried out;
- a higher `version` in spec.json (the applier rewrites it) rolls the service over,
  create-before-destroy: old replicas go only as new ones become READY;
- the `cancel` file or SIGTERM: balancer stopped, every replica terminated, SHUTDOWN, exit.

status.json (written atomically each tick; `updated_at` is added by `write_status`):
  status           STARTING (no replica was ready yet) | READY (at least one ready, or the
                   target is 0) | NOT_READY (none ready now, some were) | FAILED (the
                   autoscaler halted: the new version's app fails; or replicas could not be
                   terminated at shutdown) | SHUTTING_DOWN | SHUTDOWN (everything is gone)
  endpoint         "http://127.0.0.1:<lb port>" (null before the balancer is up)
  version          the service version being served / rolled to
  ready_replicas   how many replicas are READY now
  target_replicas  the autoscaler's target, num_overprovision included
  replicas         [{"replica_id", "version", "status" (a ReplicaStatus), "url",
                     "placement" (described), "handle" (Handle.as_dict(), null once
                     terminated), "message"}]; failed replicas stay listed (10 at most)
  attempts         [{"replica_id", "placement", "outcome" ("launched" | "capacity: ..." |
                     "transient: ..." | "error: ..."), "at"}], the last 50 launch tries
  message          why the service is not (fully) serving, or null
  next_replica_id, ever_ready   the controller's own bookkeeping for a restart
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import traceback
from pathlib import Path
from types import FrameType

from applier.controllers.common import read_status, register_self, write_status
from applier.controllers.service_core import ServiceController


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m applier.controllers.service <controller dir>", file=sys.stderr)
        return 2
    directory = Path(argv[0])
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    register_self(directory)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()  # the loop ends after this tick and tears the service down

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        ServiceController(directory).run(stop)
    except Exception as exc:
        # Replicas are left as they are: a restarted controller adopts them.
        traceback.print_exc()
        previous = read_status(directory)
        message = f"controller failed: {type(exc).__name__}: {exc}"
        write_status(directory, {**previous, "status": "FAILED", "message": message})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
