"""Stopping the server processes the tests start."""

import subprocess


def stop_process(proc: subprocess.Popen, grace: float = 20) -> None:
    """Ask the process to end, and kill it if it has not after ``grace`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
