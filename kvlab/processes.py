"""Stopping a process together with everything it started (make gpu-check's steps, the vLLM replay's server)."""
from __future__ import annotations

import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen, grace_s: float) -> str:
    """SIGTERM to the process group of `process` (started with start_new_session=True), so its own cleanup runs;
    SIGKILL to what is left after grace_s. Returns what it printed to a pipe ("" without one)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            return process.communicate(timeout=grace_s)[0] or ""
        except subprocess.TimeoutExpired:
            continue
    return process.communicate()[0] or ""
