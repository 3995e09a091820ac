"""Process limits and memory figures the bench needs."""

from __future__ import annotations

import resource

WANTED_NOFILE = 65_536


def raise_nofile(wanted: int = WANTED_NOFILE) -> int:
    """Raises RLIMIT_NOFILE towards `wanted`; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(hard, wanted)))
    except (ValueError, OSError):
        # No CAP_SYS_RESOURCE: the hard limit is as far as this process may go.
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def nofile_limit(pid: int) -> int:
    """The soft RLIMIT_NOFILE of another process (from /proc)."""
    with open(f"/proc/{pid}/limits") as handle:
        for line in handle:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return 1024


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (VmRSS)."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    import os

    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
