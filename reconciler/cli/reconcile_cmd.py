"""`skyform reconcile`: the daemon that follows a git branch and converges continuously."""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
from pathlib import Path
from types import FrameType

import click

from applier.refresh import OBSERVE_TIMEOUT_S
from reconciler.context import skyform_home
from reconciler.daemon import logs
from reconciler.daemon.service import Daemon
from reconciler.daemon.sync import Settings
from schema.errors import SkyformError


def register(group: click.Group) -> None:
    group.add_command(reconcile)


def _listen(value: str) -> tuple[str, int] | None:
    if value in ("", "off", "none"):
        return None
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint="--listen")
    return host.strip("[]") or "0.0.0.0", int(port)


def _lost() -> None:
    # A leader that cannot renew its lease must stop acting before a standby takes over; the
    # only way to stop a provider call mid-flight is to end the process (the journal resumes).
    logs.error("leadership lost; exiting so that no two replicas ever apply")
    os._exit(3)


@click.command()
@click.option(
    "--repo", required=True, metavar="URL_OR_PATH", envvar="SKYFORM_REPO", help="Git remote."
)
@click.option("--branch", default="main", show_default=True, envvar="SKYFORM_BRANCH")
@click.option(
    "--state",
    "state_url",
    metavar="URL",
    envvar="SKYFORM_STATE",
    help="State store URL (else $SKYFORM_STATE, else skyform.yaml `state:`, else SQLite).",
)
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    envvar="SKYFORM_LISTEN",
    help="HOST:PORT or off.",
)
@click.option("--once", is_flag=True, help="Sync once (fetch, plan, apply) and exit.")
@click.option(
    "--webhook-secret-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="File holding the webhook secret (else $SKYFORM_WEBHOOK_SECRET).",
)
@click.option("--lease", default=30.0, show_default=True, type=click.FloatRange(0.5, 3600))
@click.option(
    "--trusted-key",
    "trusted_keys",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Apply only commits signed by a key in these public-key files (needs gpg).",
)
@click.option("--parallelism", default=10, show_default=True, type=click.IntRange(1, 256))
@click.option(
    "--observe-timeout",
    default=OBSERVE_TIMEOUT_S,
    show_default=True,
    type=click.FloatRange(0.1, 3600),
    help="Seconds one provider may take to list what runs; a slower one keeps its resources' "
    "recorded status for that sync (never read as deleted) and does not stall the others.",
)
@click.option("--log-level", default="INFO", show_default=True)
def reconcile(
    repo: str,
    branch: str,
    state_url: str | None,
    listen: str,
    once: bool,
    webhook_secret_file: Path | None,
    lease: float,
    trusted_keys: tuple[Path, ...],
    parallelism: int,
    observe_timeout: float,
    log_level: str,
) -> None:
    """Follow a git branch: validate, plan and apply every new commit; heal drift on a schedule.

    Intervals, auto_apply and self_heal come from the repo's skyform.yaml `reconcile:`. Several
    replicas on one PostgreSQL store elect a leader through the store's lock.

    The state store, first found wins: --state, then $SKYFORM_STATE, then `state:` in the
    skyform.yaml of the branch head when the daemon starts (read before it leads; a later
    change takes a restart), then SQLite under $SKYFORM_HOME.
    """
    logs.setup(log_level)
    secret = os.environ.get("SKYFORM_WEBHOOK_SECRET")
    if webhook_secret_file is not None:
        secret = webhook_secret_file.read_text().strip()
    settings = Settings(
        repo=repo,
        home=skyform_home(),
        branch=branch,
        state_url=state_url,
        webhook_secret=secret or None,
        lease_s=lease,
        trusted_keys=trusted_keys,
        parallelism=parallelism,
        observe_timeout_s=observe_timeout,
        listen=None if once else _listen(listen),
    )
    try:
        daemon = Daemon(settings, on_lost=_lost)
        if once:
            report = daemon.run_once()
            click.echo(f"{report.outcome}: {report.summary or report.message}".rstrip(": "))
            raise SystemExit(0 if report.ok else 1)
        _serve(daemon)
    except SkyformError as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:
        raise click.ClickException(f"cannot start the reconciler: {exc}") from exc


def _serve(daemon: Daemon) -> None:
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # `kill -USR1` prints every thread's stack: the way to see what a stuck sync waits on.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    daemon.start()
    done.wait()
    daemon.stop()
