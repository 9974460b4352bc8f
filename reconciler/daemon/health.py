"""The job and replica health tick: keeps every managed job's and service's controller alive.

Controllers (`applier.controllers`) recover preempted jobs and dead replicas and run the
autoscaler themselves, every few seconds; what they cannot do is come back after their own
process died (OOM, a reboot, a stray kill). The leader's health tick starts such a controller
again on its own directory, so it adopts what it ran: a job carries on where it was instead of
reading as drift at the next drift interval and being recreated from scratch. A controller that
keeps dying is started again with a doubling delay (capped), as a crash-looping pod is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from applier.controllers import common as controllers
from reconciler.daemon import logs

BACKOFF_FIRST_S = 10.0
BACKOFF_MAX_S = 600.0


class ControllerHealth:
    def __init__(
        self,
        home: Path,
        on_revived: Callable[[str], None] = lambda address: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.home = home
        self.on_revived = on_revived
        self.clock = clock
        self._delay: dict[Path, float] = {}  # per directory: the current back-off
        self._not_before: dict[Path, float] = {}

    def tick(self) -> list[str]:
        """One pass; returns the addresses whose controller was started again."""
        now = self.clock()
        waiting = {d for d, t in self._not_before.items() if t > now}
        revived = controllers.revive(self.home, skip=waiting)
        for address, directory in revived:
            delay = self._delay.get(directory, BACKOFF_FIRST_S / 2) * 2
            self._delay[directory] = min(delay, BACKOFF_MAX_S)
            self._not_before[directory] = now + self._delay[directory]
            logs.warning(
                "a controller had died before its work ended; started it again (it adopts "
                f"what it ran; next restart no sooner than {self._delay[directory]:.0f}s)",
                address=address,
            )
            self.on_revived(address)
        gone = [d for d in self._delay if not d.exists()]
        for directory in gone:
            self._delay.pop(directory, None)
            self._not_before.pop(directory, None)
        return [address for address, _ in revived]
