"""This machine for the local provider: its CPUs, memory and GPUs (with optional caps), and
stopping a node's process group without ever signalling a stranger's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from applier.providers.local_node import proc_stat


@dataclass(frozen=True)
class Gpu:
    name: str  # SkyPilot's accelerator name, e.g. "H100", "A100-80GB", "T4"
    memory_mib: int


@dataclass(frozen=True)
class Machine:
    cpus: float
    memory_gib: float
    gpus: tuple[Gpu, ...] = ()


@dataclass(frozen=True)
class LocalCaps:
    """Upper bounds on what Skyform may use here (skyform.yaml), e.g. to show failover on one
    machine; None leaves that dimension at what the machine has."""

    cpus: float | None = None
    memory_gib: float | None = None
    gpus: int | None = None

    def apply(self, machine: Machine) -> Machine:
        cpus = machine.cpus if self.cpus is None else min(machine.cpus, self.cpus)
        mem = (
            machine.memory_gib
            if self.memory_gib is None
            else min(machine.memory_gib, self.memory_gib)
        )
        gpus = machine.gpus if self.gpus is None else machine.gpus[: max(0, self.gpus)]
        return Machine(cpus=cpus, memory_gib=mem, gpus=gpus)


def canonical_gpu_name(raw: str, memory_mib: int) -> str:
    """nvidia-smi's product name -> SkyPilot's accelerator name ('NVIDIA H100 80GB' -> H100)."""
    words = raw.replace("NVIDIA", " ").replace("Tesla", " ").replace("GeForce", " ").split()
    if not words:
        return raw.strip() or "GPU"
    head = words[0].split("-")[0].upper()
    if head == "RTX" and len(words) > 1:
        return "RTX" + words[1].upper()
    if head == "A100" and memory_mib >= 70_000:
        return "A100-80GB"  # SkyPilot names the 80 GB part separately
    return head


def parse_nvidia_smi(text: str) -> tuple[Gpu, ...]:
    """Rows of `--query-gpu=name,memory.total --format=csv,noheader`: 'NVIDIA L4, 23034 MiB'."""
    gpus = []
    for line in text.splitlines():
        name, _, memory = line.rpartition(",")
        if not name.strip():
            continue
        digits = "".join(ch for ch in memory if ch.isdigit())
        mib = int(digits) if digits else 0
        gpus.append(Gpu(canonical_gpu_name(name, mib), mib))
    return tuple(gpus)


def _memory_gib() -> float:
    # MemTotal, not MemAvailable: Skyform's own nodes are subtracted by their reservations, so
    # counting their live use too would charge them twice.
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def _gpus() -> tuple[Gpu, ...]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return ()
    query = [exe, "--query-gpu=name,memory.total", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=15, check=True)
    except (OSError, subprocess.SubprocessError):
        return ()  # a broken driver means no usable GPUs here, not a failed plan
    return parse_nvidia_smi(out.stdout)


def probe_machine() -> Machine:
    try:
        cpus = float(len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        cpus = float(os.cpu_count() or 1)
    return Machine(cpus=cpus, memory_gib=_memory_gib(), gpus=_gpus())


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def group_is_ours(pgid: int, start_time: int) -> bool:
    """A pgid number is not handed out again while any process of the group lives, so the group
    is ours unless its leader's pid now belongs to a newer process (a stranger's group)."""
    stat = proc_stat(pgid)
    return stat is None or stat[1] == start_time


def stop_group(pgid: int, start_time: int, grace_s: float = 3.0) -> None:
    """SIGTERM the node's whole group, SIGKILL what is left after `grace_s`, wait until empty."""
    if not group_is_ours(pgid, start_time):
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not _group_members(pgid):
                return
            time.sleep(0.05)
