"""Multi-process training on ``jax.distributed``: the process group and its collectives.

A multi-process run is P copies of the same ``dpverify train`` command, each
given ``--num-processes P --process-id I --coordinator HOST:PORT`` (the
arguments of :func:`jax.distributed.initialize`).  JAX's distributed runtime
does everything distributed; this module only configures it and adds the few
host-side agreements the training loop needs:

* :func:`initialize` starts the runtime.  The coordinator (process 0) binds
  exactly ``HOST:PORT`` — never a wider address (JAX's default binds every
  interface).  On CPU, cross-process collectives use gloo
  (``jax_cpu_collectives_implementation="gloo"``); on GPUs XLA uses NCCL and
  the same code runs multi-host.  Tasks are started *recoverable*
  (``jax_enable_recoverability``): when one process dies, the others see the
  failed collective as a Python exception at the step it happened in (and stop
  cleanly, ledger flushed) instead of being aborted from a runtime thread.
* After it, ``jax.devices()`` lists every device of every process: the
  trainer's data-parallel mesh (:mod:`trainers.sharding`) spans them all, each
  physical batch is split by rows over the devices of all processes, the
  clipped sums are all-reduced by XLA, and the noise is drawn once per logical
  step from the replicated noise key and added once to the reduced sum.
* :func:`put_global` turns a host value that every process holds identically
  (the index buffers, parameters, the noise key) into a global ``jax.Array``:
  each process supplies its own devices' part.
* :func:`broadcast_json`, :func:`broadcast_tree`, :func:`agree` and
  :func:`barrier` are host-side agreements over the runtime's collectives:
  process 0 (the *leader*, the only writer of the ledger and summary, and
  the process that records each checkpoint every process helped write) hands
  its secrets and state to the others, and every process checks that it runs
  the same command.

Failure model: a process that dies makes the next collective fail on every
other process; the loop turns that into :class:`PeerFailed` (exit code 1) after
flushing the ledger.  ``--resume`` continues from the last checkpoint.

References: the JAX multi-process guide ("Using JAX in multi-host and
multi-process environments", jax.readthedocs.io); Xu et al. 2021, GSPMD,
arXiv:2105.04663.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from dpverify._validate import check_int
from dpverify.errors import DpverifyError, InvalidArgument

__all__ = [
    "LEADER",
    "PeerFailed",
    "ProcessGroup",
    "agree",
    "barrier",
    "broadcast_all_json",
    "broadcast_json",
    "broadcast_tree",
    "end_process",
    "initialize",
    "is_leader",
    "maybe_fail_at",
    "parse_coordinator",
    "put_global",
]

#: The process that writes the ledger, the checkpoints and the summary.
LEADER = 0

#: Test-only fault injection: ``"I:T"`` makes process I kill itself (SIGKILL)
#: just before logical step T.  Read by :func:`maybe_fail_at`; never set it in
#: production.
FAULT_ENV = "DPVERIFY_TEST_KILL_AT"


class PeerFailed(DpverifyError):
    """Another process of the job stopped (died, was killed or failed).

    The ledger holds every step recorded before; ``--resume`` continues from
    the last checkpoint.  Exit code 1: the job did not complete.
    """

    exit_code = 1


def parse_coordinator(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → ``(host, port)``.

    Raises:
        InvalidArgument: no port, a port outside 1..65535, or an empty host.
    """
    if not isinstance(text, str):
        raise InvalidArgument(f"coordinator={text!r} must be HOST:PORT")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidArgument(f"coordinator={text!r} must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 1 <= number <= 65535:
        raise InvalidArgument(f"coordinator={text!r}: port must be in 1..65535")
    if not host:
        raise InvalidArgument(f"coordinator={text!r} must be HOST:PORT")
    return host, number


@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcessGroup:
    """The arguments of :func:`jax.distributed.initialize` for one process.

    Attributes:
        num_processes: P ≥ 1, processes in the job.
        process_id: I in 0..P−1; process 0 is the leader (ledger writer) and
            hosts the coordinator.
        coordinator: ``HOST:PORT`` of the coordinator (process 0's address as
            the other processes reach it); process 0 binds exactly this.
        initialization_timeout: seconds to wait for every process to join.
    """

    num_processes: int
    process_id: int
    coordinator: str
    initialization_timeout: int = 300

    def __post_init__(self) -> None:
        p = check_int("num_processes", self.num_processes, minimum=1)
        i = check_int("process_id", self.process_id, minimum=0)
        if i >= p:
            raise InvalidArgument(f"process_id={i} must be < num_processes={p}")
        parse_coordinator(self.coordinator)
        check_int("initialization_timeout", self.initialization_timeout, minimum=1)

    @property
    def is_leader(self) -> bool:
        """True for process 0."""
        return self.process_id == LEADER

    @property
    def is_multi_process(self) -> bool:
        """True when P > 1."""
        return self.num_processes > 1

    def describe(self) -> dict[str, Any]:
        """Public provenance for the ledger header's ``extra``: P (no addresses)."""
        return {"processes": self.num_processes}


_INITIALIZED: ProcessGroup | None = None


def initialize(group: ProcessGroup) -> None:
    """Start JAX's distributed runtime for ``group`` (once per process).

    Must run before JAX creates its backends (before any computation).  A
    single-process group does nothing.

    Raises:
        InvalidArgument: called again with a different group, or after JAX
            already started its backends.
    """
    global _INITIALIZED
    if not group.is_multi_process:
        return
    if _INITIALIZED is not None:
        if _INITIALIZED != group:
            raise InvalidArgument("jax.distributed is already initialised for another group")
        return
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_enable_recoverability", True)
    try:
        jax.distributed.initialize(
            coordinator_address=group.coordinator,
            num_processes=group.num_processes,
            process_id=group.process_id,
            coordinator_bind_address=group.coordinator,
            initialization_timeout=group.initialization_timeout,
        )
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        raise PeerFailed(
            f"process {group.process_id}: jax.distributed.initialize({group.coordinator}) "
            f"failed: {text[:300]}"
        ) from None
    _INITIALIZED = group


def is_leader() -> bool:
    """True in process 0 (and in any single-process run)."""
    import jax

    return jax.process_index() == LEADER


def _multi() -> bool:
    import jax

    return jax.process_count() > 1


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op with one process)."""
    if not _multi():
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def broadcast_json(obj: Any) -> Any:
    """The leader's JSON-able ``obj`` on every process (followers pass anything).

    Two collectives: the byte length, then the UTF-8 bytes as a uint8 array.
    """
    if not _multi():
        return obj
    import numpy as np
    from jax.experimental import multihost_utils

    data = json.dumps(obj, sort_keys=True).encode() if is_leader() else b""
    size = int(multihost_utils.broadcast_one_to_all(np.array(len(data), np.int64)))
    buf = np.zeros(max(size, 1), np.uint8)
    if is_leader():
        buf[:size] = np.frombuffer(data, np.uint8)
    buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return json.loads(bytes(buf[:size]).decode())


def broadcast_tree(tree: Any) -> Any:
    """The leader's pytree of arrays on every process, as host (NumPy) arrays.

    Followers pass a template with the same structure, shapes and dtypes
    (e.g. freshly initialised parameters); its values are ignored.
    """
    import jax
    import numpy as np

    host = jax.tree_util.tree_map(np.asarray, jax.device_get(tree))
    if not _multi():
        return host
    from jax.experimental import multihost_utils

    out = multihost_utils.broadcast_one_to_all(host)
    return jax.tree_util.tree_map(np.asarray, out)


def agree(ok: bool, message: str) -> list[str]:
    """Every process's ``(ok, message)``; raises on every process unless all are ok.

    Returns the messages of all processes (index = process id) when all agree.

    Raises:
        InvalidArgument: some process passed ``ok=False``; the message is the
            first failing process's.
    """
    if not _multi():
        if not ok:
            raise InvalidArgument(message)
        return [message]
    import jax

    texts = broadcast_all_json({"ok": bool(ok), "message": str(message)})
    for pid, item in enumerate(texts):
        if not item["ok"]:
            prefix = "" if pid == jax.process_index() else f"process {pid}: "
            raise InvalidArgument(prefix + item["message"])
    return [item["message"] for item in texts]


def broadcast_all_json(obj: Any) -> list[Any]:
    """Every process's JSON-able ``obj``, in process order (an all-gather)."""
    if not _multi():
        return [obj]
    import numpy as np
    from jax.experimental import multihost_utils

    data = json.dumps(obj, sort_keys=True).encode()
    sizes = np.asarray(multihost_utils.process_allgather(np.array([len(data)], np.int64)))
    sizes = sizes.reshape(-1)
    width = int(sizes.max())
    buf = np.zeros(width, np.uint8)
    buf[: len(data)] = np.frombuffer(data, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(buf)).reshape(len(sizes), width)
    return [json.loads(bytes(rows[i, : sizes[i]]).decode()) for i in range(len(sizes))]


def put_global(tree: Any, sharding: Any) -> Any:
    """``tree`` (host values identical on every process) as global arrays of ``sharding``.

    Each process supplies the slices its own devices hold
    (:func:`jax.make_array_from_callback`); an array already placed with
    ``sharding`` is returned as it is.  Typed PRNG key arrays are moved as
    their key data and re-wrapped.  Within one process this is
    ``jax.device_put``.
    """
    import jax
    import numpy as np

    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def put(leaf: Any) -> Any:
        if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
            return leaf
        dtype = getattr(leaf, "dtype", None)
        if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(leaf)
            data = put(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=impl)
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(put, tree)


def end_process(code: int, *, timeout_s: float = 30.0) -> None:
    """End this process of a multi-process job with exit status ``code`` (never returns).

    JAX's own exit path (``jax.distributed.shutdown`` at interpreter exit)
    sends a disconnect RPC to the coordination service that process 0 hosts;
    a follower whose RPC arrives after process 0 has exited is aborted by the
    runtime (SIGABRT).  So a job ends with a handshake instead: after a
    successful run (``code == 0``) each follower publishes "finished" in the
    runtime's key-value store and exits at once (``os._exit``, no RPC); process
    0 waits (up to ``timeout_s``) for every follower's key, gives them a moment
    to be gone, then exits.  After a failure no process waits for the others.
    Standard streams are flushed first; the ledger and files are closed by
    then (the training loop returns only after closing them).
    """
    import sys
    import time

    with _suppress():
        sys.stdout.flush()
        sys.stderr.flush()
    if code == 0 and _INITIALIZED is not None:
        with _suppress():
            from jax._src import distributed as _jd

            client: Any = _jd.global_state.client  # private JAX API, Optional in its stubs
            me = _INITIALIZED.process_id
            if me != LEADER:
                client.key_value_set(f"dpverify/finished/{me}", "1")
            else:
                for pid in range(1, _INITIALIZED.num_processes):
                    client.blocking_key_value_get(
                        f"dpverify/finished/{pid}", int(timeout_s * 1000)
                    )
                time.sleep(0.5)
    os._exit(int(code))


def _suppress() -> Any:
    import contextlib

    return contextlib.suppress(Exception)


def maybe_fail_at(step: int) -> None:
    """Test-only fault injection (see :data:`FAULT_ENV`): SIGKILL this process at ``step``."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    import jax

    pid, _, at = spec.partition(":")
    if int(pid) == jax.process_index() and int(at) == step:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
