"""``dpverify launch -n P -- train …``: a P-process ``jax.distributed`` job on this host.

Starts P copies of ``dpverify train …`` with ``--num-processes P --process-id I
--coordinator 127.0.0.1:PORT``.  Everything stays on the loopback interface:
the coordinator (process 0) binds 127.0.0.1 only, and the processes reach
each other there; nothing listens on another address.  PORT is a free
loopback port unless ``--port`` names one.

Supervision: when a process ends with a non-zero status, the others are sent
SIGINT (each finishes or abandons its step, flushes the ledger and stops);
any still running after ``--grace`` seconds are killed.  The launcher exits
with the status of the first process that failed (128 + signal number for a
signal), or 0 when all succeeded.  Processes found ended in the same poll
(50 ms) count as failing together; of those, one killed by a signal is named
first, because a process whose collective broke when its peer died ends with
status 1 moments after the cause.  ``--gpus-per-process K`` gives process I
the GPUs I·K … I·K+K−1 (``CUDA_VISIBLE_DEVICES``) on a multi-GPU host.  Ctrl-C (SIGINT) or SIGTERM sent to the
launcher is forwarded once to every process as SIGINT.  Process 0's output is
the job's output; ``--resume`` is passed through like any train argument.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from dpverify.cli._common import integer, positive_float
from dpverify.errors import InvalidArgument

__all__ = ["LOOPBACK", "launch_command", "process_env", "register"]

#: The only address a launched job uses.
LOOPBACK = "127.0.0.1"

_OWN_FLAGS = ("--num-processes", "--process-id", "--coordinator")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``launch`` to the dpverify parser."""
    p = subparsers.add_parser(
        "launch",
        help="run `dpverify train` as P local processes (jax.distributed on 127.0.0.1)",
        description=(
            "Start P local processes of `dpverify train ...` as one jax.distributed job on the "
            "loopback interface (127.0.0.1 only). Process 0 writes the run directory. "
            "Example: dpverify launch -n 2 -- train --task digits-mlp --out RUN"
        ),
    )
    p.add_argument(
        "-n", "--num-processes", type=integer, required=True, metavar="P", help="processes to start"
    )
    p.add_argument(
        "--port", type=integer, metavar="PORT", help="coordinator port on 127.0.0.1 (default: free)"
    )
    p.add_argument(
        "--grace",
        type=positive_float,
        default=30.0,
        metavar="S",
        help="seconds the other processes get to stop after one fails (30)",
    )
    p.add_argument(
        "--gpus-per-process",
        type=integer,
        metavar="K",
        help="GPU host: process I sees GPUs I*K .. I*K+K-1 (CUDA_VISIBLE_DEVICES)",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- train ARGS")
    p.set_defaults(handler=_launch)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def launch_command(command: list[str], num_processes: int, process_id: int, port: int) -> list[str]:
    """The argv of process ``process_id``: ``python -m dpverify train … --num-processes …``."""
    return [
        sys.executable,
        "-m",
        "dpverify",
        *command,
        "--num-processes",
        str(num_processes),
        "--process-id",
        str(process_id),
        "--coordinator",
        f"{LOOPBACK}:{port}",
    ]


def process_env(process_id: int, gpus_per_process: int | None) -> dict[str, str]:
    """Process ``process_id``'s environment: this one, plus its GPUs when asked."""
    import os

    env = dict(os.environ)
    if gpus_per_process is not None:
        first = process_id * gpus_per_process
        env["CUDA_VISIBLE_DEVICES"] = ",".join(
            str(g) for g in range(first, first + gpus_per_process)
        )
    return env


def _check_command(command: list[str]) -> list[str]:
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise InvalidArgument("launch needs a command after --, e.g. -- train --out RUN")
    if command[0] != "train":
        raise InvalidArgument(f"command={command[0]!r}: launch runs only `train`")
    for arg in command:
        flag = arg.split("=", 1)[0]
        if flag in _OWN_FLAGS:
            raise InvalidArgument(f"{flag} is set by launch for each process; remove it")
    return command


def _launch(args: argparse.Namespace) -> int:
    n = args.num_processes
    if n < 1:
        raise InvalidArgument(f"num_processes={n} must be >= 1")
    command = _check_command(list(args.command))
    port = args.port if args.port is not None else _free_port()
    if not 1 <= port <= 65535:
        raise InvalidArgument(f"port={port} must be in 1..65535")
    k = args.gpus_per_process
    if k is not None and k < 1:
        raise InvalidArgument(f"gpus_per_process={k} must be >= 1")
    procs = [
        subprocess.Popen(
            launch_command(command, n, i, port), start_new_session=True, env=process_env(i, k)
        )
        for i in range(n)
    ]
    return _supervise(procs, grace=args.grace)


def _status(code: int) -> int:
    """A ``Popen.returncode`` as a shell exit status (signal k → 128 + k)."""
    return 128 - code if code < 0 else code


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"status {code}"


def _interrupt_all(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)


def _supervise(procs: list[subprocess.Popen], *, grace: float) -> int:
    """Wait for every process; on the first failure stop the others (see module docstring)."""
    forwarded = {"done": False}

    def forward(signum: int, frame: Any) -> None:
        if not forwarded["done"]:
            forwarded["done"] = True
            _interrupt_all(procs)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    first_failure: int | None = None
    deadline: float | None = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed and first_failure is None:
                # a signal death is the cause; a status-1 exit in the same poll its effect
                i, first_failure = min(failed, key=lambda f: (f[1] >= 0, f[0]))
                sys.stderr.write(
                    f"dpverify launch: process {i} ended with {_describe(first_failure)}; "
                    "stopping the others\n"
                )
                _interrupt_all(procs)
                deadline = time.monotonic() + grace
            if all(c is not None for c in codes):
                break
            if deadline is not None and time.monotonic() > deadline:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.05)
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    return 0 if first_failure is None else _status(first_failure)
