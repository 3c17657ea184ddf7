"""Opening one training session across the P processes of a ``jax.distributed`` job.

Process 0 (the leader) alone creates or resumes the run directory, exactly
as a single-process run does (:func:`trainers.session.open_new` /
:func:`trainers.session.open_resume`: secrets, ``config.json``, ledger header
or ``Resume`` record, the restored checkpoint).  It then hands the other
processes (followers) what they need to compute the same steps, in memory
over the runtime's collectives; the followers' only writes to the run
directory are their shares of the Orbax checkpoints (so a multi-host job needs
a file system every host sees at the same path):

1. before anything is written, every process checks that all P run the same
   command (:func:`trainers.distributed.agree` on the request, the run
   directory and ``--resume``);
2. the leader broadcasts the resolved plan, the private sampler seed and
   sampler, the noise key, the step to start from and the number of steps
   executed so far (or the error that stopped it, which every follower then
   raises too);
3. the leader broadcasts the parameters and optimiser state it starts from
   (checkpoint 0 of a new run, the restored checkpoint of a resumed one);
4. every follower loads its own copy of the data set and all processes agree
   that its fingerprint is the leader's;
5. a new run's checkpoint 0 is written by all processes together (Orbax,
   :func:`trainers.checkpoint_orbax.save_orbax_checkpoint`), as every later
   checkpoint of the job is.

A resumed job restores its checkpoint on process 0 alone — a msgpack file of
a single-process run or an Orbax directory of a job with any process count,
read whole into host memory — and broadcasts it (step 3), so the process count
may change at a resume.

A follower's :class:`~trainers.session.Session` has a :class:`FollowerWriter`
that records nothing (it writes only its share of each Orbax checkpoint); it draws the same logical batches from the same seed,
so every process feeds the same index buffers to the global step (each
process computes the rows of the physical batches that its devices hold).

The noise key travels to the followers in memory over the job's network, like
the gradients do; it is never written by a follower.  Run the job on a
network you trust (one host's loopback interface for ``dpverify launch``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dpverify.errors import DpverifyError, InvalidArgument, UnusableInput
from trainers import distributed
from trainers.distributed import PeerFailed, ProcessGroup

__all__ = ["FollowerWriter", "open_shared"]

# Errors the leader may hit while opening, re-raised by the followers as such.
_ERRORS: dict[str, type[DpverifyError]] = {
    "InvalidArgument": InvalidArgument,
    "UnusableInput": UnusableInput,
}


class FollowerWriter:
    """The ledger writer of a process other than 0: it records nothing.

    The ledger, its hash chain and the checkpoints are the leader's alone;
    a follower computes the same steps and discards its copies of the records.
    """

    head: str | None = None

    def append(self, record: Any) -> None:
        """Discard ``record`` (the leader appends it)."""

    def flush(self) -> None:
        """Nothing to flush."""

    def close(self, seal: Any = None) -> None:
        """Discard ``seal`` (the leader writes it)."""


def _request_fingerprint(config: Any, run_dir: Path, resume: bool) -> dict[str, Any]:
    raw = {} if config is None else dataclasses.asdict(config)
    raw["sampler_params"] = dict(raw.get("sampler_params") or {})
    return {"config": raw, "run_dir": str(run_dir), "resume": bool(resume)}


def open_shared(
    run_dir: Path,
    config: Any,
    *,
    resume: bool,
    group: ProcessGroup,
    open_leader: Callable[[], Any],
) -> Any:
    """The :class:`~trainers.session.Session` of this process in a P-process job.

    Args:
        run_dir: the run directory (process 0 creates or resumes it).
        config: this process's ``TrainConfig`` (must equal every other's).
        resume: ``--resume`` (must equal every other's).
        group: this process's :class:`~trainers.distributed.ProcessGroup`
            (the runtime is already initialised).
        open_leader: called on process 0 only: opens the run as a
            single-process run would and returns its session.

    Raises:
        InvalidArgument: the processes were started with different requests
            or see different data sets (raised on every process).
        PeerFailed: process 0 could not open the run (followers; the leader
            raises the original error).
    """
    mine = _request_fingerprint(config, run_dir, resume)
    others = distributed.broadcast_json(mine)
    same = others == mine
    distributed.agree(
        same,
        "was started with a different command than process 0 "
        "(every process must get the same train arguments, --out and --resume)",
    )
    if group.is_leader:
        try:
            session = open_leader()
            if getattr(session.plan, "canaries", 0) and session.sealed_summary is None:
                raise InvalidArgument(
                    f"canaries={session.plan.canaries}: canaries are not supported in "
                    "multi-process runs yet"
                )
        except DpverifyError as exc:
            distributed.broadcast_json({"error": type(exc).__name__, "message": str(exc)})
            raise
        except BaseException as exc:
            distributed.broadcast_json({"error": "internal", "message": type(exc).__name__})
            raise
        distributed.broadcast_json(_leader_blob(session))
        if session.sealed_summary is not None:
            return session
        distributed.broadcast_tree((session.params, session.opt_state))
        _agree_on_data(session.dataset.fingerprint, session.dataset.fingerprint)
        session.shared = True
        return _initial_checkpoint(session)
    blob = distributed.broadcast_json(None)
    if "error" in blob:
        cls = _ERRORS.get(blob["error"])
        if cls is not None:
            raise cls(blob["message"])
        raise PeerFailed(f"process 0 failed to open the run ({blob['message']})")
    return _initial_checkpoint(_follower_session(run_dir, blob))


def _initial_checkpoint(session: Any) -> Any:
    """Checkpoint 0 of a new job, written by every process (a resumed job has its own)."""
    if not session.resumed and session.sealed_summary is None:
        session.checkpoint(0, session.params, session.opt_state)
    return session


def _leader_blob(session: Any) -> dict[str, Any]:
    if session.sealed_summary is not None:
        return {"sealed_summary": session.sealed_summary, "plan": session.plan.to_json()}
    return {
        "plan": session.plan.to_json(),
        "private": session.private,
        "noise_key": session.noise_key.hex(),
        "noise_key_digest": session.noise_key_digest,
        "start_step": session.start_step,
        "executed_before": session.executed_before,
        "resumed": session.resumed,
        "fingerprint": session.dataset.fingerprint,
    }


def _agree_on_data(mine: str | None, leaders: str | None) -> None:
    distributed.agree(
        mine == leaders,
        "its data set does not match process 0's (dataset fingerprint differs)",
    )


def _follower_session(run_dir: Path, blob: dict[str, Any]) -> Any:
    from trainers.components import build_components
    from trainers.run_plan import RunPlan
    from trainers.session import (
        Session,
        _init_seed,
        load_dataset,
        make_sampler,
        resolve_run_clipping,
    )

    plan = RunPlan.from_json(blob["plan"])
    if "sealed_summary" in blob:
        return Session(
            run_dir=run_dir, plan=plan, private={}, dataset=None, sampler=None,
            model_apply=None, optimizer=None, params=None, opt_state=None, noise_key=b"",
            noise_key_digest="", writer=None, start_step=plan.steps, executed_before=0,
            resumed=True, sealed_summary=blob["sealed_summary"], leader=False, shared=True,
        )  # fmt: skip
    private = blob["private"]
    seed = int(private["seed"])
    dataset = load_dataset(plan.task, plan.data_path)
    comps = build_components(plan, dataset, _init_seed(seed))
    clipping, clipping_reason = resolve_run_clipping(plan, comps, dataset)  # as process 0
    params, opt_state = distributed.broadcast_tree((comps.params, comps.opt_state))
    _agree_on_data(dataset.fingerprint, blob["fingerprint"])
    sampler = make_sampler(
        private["sampler"],
        plan.dataset_size,
        plan.sampling_rate,
        seed,
        dict(private.get("sampler_params") or {}),
    )
    return Session(
        run_dir=run_dir,
        plan=plan,
        private=private,
        dataset=dataset,
        sampler=sampler,
        model_apply=comps.model_apply,
        optimizer=comps.optimizer,
        params=params,
        opt_state=opt_state,
        noise_key=bytes.fromhex(blob["noise_key"]),
        noise_key_digest=blob["noise_key_digest"],
        writer=FollowerWriter(),
        start_step=int(blob["start_step"]),
        executed_before=int(blob["executed_before"]),
        resumed=bool(blob["resumed"]),
        leader=False,
        shared=True,
        clipping=clipping,
        clipping_reason=clipping_reason,
    )
