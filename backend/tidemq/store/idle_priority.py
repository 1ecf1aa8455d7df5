"""Background work that yields the CPU to everything else: a thread scheduled SCHED_IDLE.

Populating a new 1 GiB segment is CPU work (page allocation and zeroing; on a cold VM, also
the host backing the memory: up to ~2 s of CPU per GiB). In a worker thread of normal
priority it competed with the broker's event loop and the clients for the cores, and cut
the throughput of whatever ran meanwhile. Under SCHED_IDLE it runs only on a core nothing
else wants, so a prepared segment costs the cores only their idle time; a writer that
reaches pages not yet populated faults them in itself, as it would without preparation.

A new thread each time, never a pooled one: a thread cannot leave SCHED_IDLE again without
CAP_SYS_NICE (or an RLIMIT_NICE allowance), so a pooled worker would carry the policy into
later jobs (fsync, scans).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable


def run_at_idle_priority(work: Callable[[], None], *, name: str = "tidemq-idle") -> None:
    """Run ``work`` in a new thread scheduled SCHED_IDLE and wait for it (blocking: call it
    from a worker thread). Raises what ``work`` raised. Where the policy is not available
    (not Linux) the thread runs at normal priority."""
    failure: list[BaseException] = []

    def body() -> None:
        make_this_thread_idle()
        try:
            work()
        except BaseException as error:  # handed to the waiting caller
            failure.append(error)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def make_this_thread_idle() -> bool:
    """Schedule the calling thread SCHED_IDLE (for good). Returns whether it could."""
    policy = getattr(os, "SCHED_IDLE", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))  # pid 0: this thread (Linux)
    except OSError:
        return False
    return True
