"""``dpverify train`` and ``dpverify demo``: masked DP-SGD runs that write a ledger.

The commands parse and delegate to :func:`trainers.loop.train` (and, for the
demo, :func:`audits.run_audit`).  JAX is imported only when a command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from dpverify._json import finite
from dpverify.cli._common import integer, positive_float, print_json
from dpverify.errors import DpverifyError, InvalidArgument, UnusableInput

__all__ = ["register"]

#: Default run directory of ``dpverify demo`` (a numbered sibling if it exists).
DEMO_DIR = "dpverify-demo"
#: Replay budget (steps) of the demo's audit: 50 of its 150 steps, in whole 25-step segments.
DEMO_REPLAY_STEPS = 50


def _physical_batch(text: str) -> int | str:
    if text == "auto":
        return "auto"
    return integer(text)


def _key_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train`` and ``demo`` to the dpverify parser."""
    p = subparsers.add_parser(
        "train",
        help="train a model with masked DP-SGD, recording every step in a ledger",
        description=(
            "Train with Poisson-sampled masked DP-SGD (JAX). Writes RUN_DIR/ledger/, "
            "RUN_DIR/checkpoints/, RUN_DIR/summary.json; the noise key and sampler seed "
            "stay private in RUN_DIR (mode 0600). Unset hyperparameters take the task's defaults."
        ),
    )
    p.add_argument("--task", help="task name (default digits-mlp)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--sampling-rate", type=positive_float, metavar="Q", help="Poisson rate q in (0, 1]"
    )
    g.add_argument(
        "--expected-batch-size", type=positive_float, metavar="E", help="E = q·N (sets q)"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--noise-multiplier", type=positive_float, metavar="SIGMA", help="σ >= 0")
    g.add_argument(
        "--target-epsilon", type=positive_float, metavar="EPS", help="calibrate σ for this ε"
    )
    p.add_argument(
        "--clip-norm", type=positive_float, metavar="C", help="per-example clip norm C > 0"
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--steps", type=integer, metavar="T", help="logical steps T")
    g.add_argument("--epochs", type=positive_float, metavar="E", help="T = ceil(epochs / q)")
    p.add_argument(
        "--delta", type=positive_float, metavar="DELTA", help="δ (default min(1e-5, 0.1/N))"
    )
    p.add_argument(
        "--physical-batch-size",
        type=_physical_batch,
        metavar="P",
        help="rows per compiled batch, or auto",
    )
    p.add_argument("--precision", help="float32 (default), tf32 or bf16")
    p.add_argument(
        "--clipping",
        help="per-example clipping: auto (default: ghost when every trainable layer "
        "is supported, else vmap), ghost or vmap",
    )
    p.add_argument("--seed", type=integer, help="private seed (default: random)")
    p.add_argument(
        "--sampler", help="poisson (default); other names are shortcuts, labelled as such"
    )
    p.add_argument(
        "--sampler-param",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="sampler parameter, e.g. cap=80 for truncated_poisson",
    )
    p.add_argument(
        "--declare-sampler",
        metavar="NAME",
        help="(teaching/testing) write NAME into the ledger header instead of the true sampler",
    )
    p.add_argument("--mutation", help=argparse.SUPPRESS)
    p.add_argument("--resume", action="store_true", help="continue a killed run in RUN_DIR")
    p.add_argument("--data", metavar="PATH", help="local data for tasks that need files")
    p.add_argument(
        "--learning-rate",
        type=positive_float,
        metavar="LR",
        help="optimizer step size (task default)",
    )
    p.add_argument("--optimizer", help="adam, sgd or momentum")
    p.add_argument(
        "--checkpoint-every", type=integer, metavar="K", help="checkpoint every K steps (25)"
    )
    p.add_argument(
        "--devices", type=integer, metavar="N", help="split each physical batch over N devices"
    )
    p.add_argument(
        "--streams",
        type=integer,
        metavar="S",
        help="deal each step's physical batches to S devices that run concurrently "
        "(on the CPU: S host devices, set up for you); it pays for some models only: measure",
    )
    p.add_argument(
        "--canaries",
        type=integer,
        metavar="M",
        default=0,
        help="insert M secret gradient canaries (each included with probability 1/2; "
        "the auditor derives an empirical lower bound on ε from them)",
    )
    g = p.add_argument_group(
        "multi-process (jax.distributed)",
        "run as process I of P; every process gets the same arguments; process 0 writes "
        "RUN_DIR (see also: dpverify launch)",
    )
    g.add_argument("--num-processes", type=integer, metavar="P", help="processes in the job")
    g.add_argument("--process-id", type=integer, metavar="I", help="this process, 0..P-1")
    g.add_argument(
        "--coordinator", metavar="HOST:PORT", help="process 0's address (it binds exactly this)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(handler=_train)

    d = subparsers.add_parser(
        "demo",
        help="train digits with masked DP-SGD, then audit it and print the verdict",
        description="The main job: train the digits MLP with masked DP-SGD, audit the run, "
        "and print the verdict and where the certificate and report are.",
    )
    d.add_argument("--out", metavar="DIR", help=f"run directory (default ./{DEMO_DIR})")
    d.add_argument("--seed", type=integer, help="private seed (default: random)")
    d.add_argument(
        "--replay-steps",
        type=integer,
        metavar="K",
        default=DEMO_REPLAY_STEPS,
        help=f"steps the auditor replays (default {DEMO_REPLAY_STEPS}; 0 disables)",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(handler=_demo)


def _config(args: argparse.Namespace) -> Any:
    from trainers.run_plan import TrainConfig

    return TrainConfig(
        task=args.task,
        sampling_rate=args.sampling_rate,
        expected_batch_size=args.expected_batch_size,
        noise_multiplier=args.noise_multiplier,
        target_epsilon=args.target_epsilon,
        clip_norm=args.clip_norm,
        steps=args.steps,
        epochs=args.epochs,
        delta=args.delta,
        physical_batch_size=args.physical_batch_size,
        precision=args.precision,
        seed=args.seed,
        sampler=args.sampler,
        sampler_params=dict(args.sampler_param),
        declare_sampler=args.declare_sampler,
        learning_rate=args.learning_rate,
        optimizer=args.optimizer,
        checkpoint_every=args.checkpoint_every,
        data_path=args.data,
        mutation=args.mutation,
        devices=args.devices,
        streams=args.streams,
        canaries=args.canaries,
        clipping=args.clipping,
    )


def _process_group(args: argparse.Namespace) -> Any:
    """The ``ProcessGroup`` of ``--num-processes/--process-id/--coordinator``, or ``None``."""
    given = {
        "num_processes": args.num_processes,
        "process_id": args.process_id,
        "coordinator": args.coordinator,
    }
    if all(v is None for v in given.values()):
        return None
    if args.num_processes == 1 and args.coordinator is None and args.process_id in (None, 0):
        return None
    missing = [k for k, v in given.items() if v is None]
    if missing:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing)
        raise InvalidArgument(f"a multi-process run also needs {flags}")
    from trainers.distributed import ProcessGroup

    return ProcessGroup(**given)


def _train(args: argparse.Namespace) -> int:
    group = _process_group(args)
    if group is None or not group.is_multi_process:
        return _train_run(args, group)
    # One process of a jax.distributed job: report an error in one line like
    # the other commands, then end through the job's exit handshake.
    from trainers.distributed import end_process

    try:
        code = _train_run(args, group)
    except DpverifyError as exc:
        sys.stderr.write(f"dpverify: error: {' '.join(str(exc).split())}\n")
        code = exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("dpverify: interrupted; rerun the same command with --resume\n")
        code = 130
    except Exception as exc:  # last resort, as in dpverify.cli.main
        text = " ".join(str(exc).split()) or type(exc).__name__
        sys.stderr.write(f"dpverify: internal error: {type(exc).__name__}: {text}\n")
        code = 3
    end_process(code)
    return code  # not reached


def _host_devices_for_streams(streams: int | None) -> None:
    """``--streams S`` on the CPU needs S host devices: ask XLA for them, unless
    ``XLA_FLAGS`` already sets a count.  XLA reads the flag when JAX starts its
    backends, which no command has done before training."""
    if streams is None or streams < 2:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        count = f"--xla_force_host_platform_device_count={streams}"
        os.environ["XLA_FLAGS"] = f"{flags} {count}".strip()


def _train_run(args: argparse.Namespace, group: Any) -> int:
    from trainers.loop import train

    config = _config(args)
    _host_devices_for_streams(config.streams)
    with _second_ctrl_c_exits(), _native_stdout_to_stderr(group is not None):
        summary = train(
            config, args.out, resume=args.resume, progress=not args.quiet, processes=group
        )
    if group is not None and not group.is_leader:
        return 0  # process 0 prints the summary
    if args.resume and summary.get("note_resume"):  # nothing was trained now: say so
        sys.stderr.write(
            f"dpverify train: {args.out} is already finished ({summary.get('steps')} steps, "
            "sealed); nothing to resume — its summary:\n"
        )
    if args.json:
        print_json(finite(summary))
    else:
        sys.stdout.write(summary_text(summary, args.out) + "\n")
    return 0


@contextlib.contextmanager
def _native_stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """While training multi-process, native output to fd 1 goes to stderr.

    The distributed runtime's native libraries (gloo) print connection notices
    to the process's stdout; stdout is kept for the summary (``--json`` must
    stay one JSON document).
    """
    if not enabled:
        yield
        return
    import os

    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def _second_ctrl_c_exits() -> Iterator[None]:
    """While training from the command line, a second Ctrl-C ends the process (exit 130).

    See :mod:`trainers.interrupt`: no exception is raised inside XLA, the
    ledger is flushed first, and interpreter teardown is not left to a
    further Ctrl-C.
    """
    from trainers.interrupt import exit_process_on_second_interrupt

    exit_process_on_second_interrupt(True)
    try:
        yield
    finally:
        exit_process_on_second_interrupt(False)


def _fmt(value: Any, spec: str = ".3g") -> str:
    return "n/a" if value is None else format(value, spec)


def summary_text(summary: dict[str, Any], run_dir: str | Path) -> str:
    """A few human lines describing a finished run (no indices, no secrets)."""
    eps = summary.get("epsilon") or {}
    parts = []
    for name in ("pld", "prv", "rdp"):
        res = eps.get(name)
        value = None
        if isinstance(res, dict):
            value = res.get("upper", res.get("epsilon"))
        if value is not None:
            parts.append(f"{name.upper()} {value:.3g}")
    eps_text = ", ".join(parts) if parts else "n/a"
    if summary.get("noise_multiplier") == 0:
        eps_text = "infinite (noise multiplier 0: no privacy)"
    sampler = summary.get("sampler")
    if summary.get("shortcut"):
        sampler = f"{sampler}  (SHORTCUT: the Poisson epsilon does not apply)"
        if summary.get("declared_sampler") != summary.get("sampler"):
            sampler += f"; header declares {summary.get('declared_sampler')!r}"
    lines = [
        f"run:         {run_dir}",
        f"task:        {summary.get('task')}  sampler: {sampler}",
        f"steps:       {summary.get('steps')} ({summary.get('steps_executed')} executed"
        + (
            f", resumed at {summary['resumed_from']})"
            if summary.get("resumed_from") is not None
            else ")"
        ),
        f"accuracy:    {_fmt(summary.get('accuracy'), '.3f')} (held-out)",
        f"epsilon:     {eps_text} at delta={_fmt(summary.get('delta'), 'g')}"
        f" (claimed {_fmt(summary.get('claimed_epsilon'))})",
        f"throughput:  {_fmt(summary.get('examples_per_second'), ',.0f')} examples/s, "
        f"{summary.get('compilations')} compilation(s)"
        + (
            f" ({summary['compile_seconds']:.1f} s, before step 0)"
            if isinstance(summary.get("compile_seconds"), int | float)
            else ""
        )
        + f", physical batch {summary.get('physical_batch_size')}, {summary.get('precision')}",
    ]
    if summary.get("clipping"):
        lines.append(f"clipping:    {summary['clipping']} ({summary.get('clipping_reason')})")
    delta, q, e = (summary.get(k) for k in ("delta", "sampling_rate", "expected_batch_size"))
    if delta is not None and q and e and delta >= q / e:  # q / E = 1 / N
        lines.append(
            f"warning:     delta={delta:g} is not below 1/N = {q / e:.3g}: "
            "such a guarantee allows publishing an example outright"
        )
    return "\n".join(lines)


def _demo_dir(out: str | None) -> Path:
    if out is not None:
        return Path(out)
    base = Path(DEMO_DIR)
    if not base.exists():
        return base
    for i in range(2, 10_000):
        candidate = Path(f"{DEMO_DIR}-{i}")
        if not candidate.exists():
            return candidate
    raise InvalidArgument(f"too many {DEMO_DIR}-N directories here; pass --out")


def _demo(args: argparse.Namespace) -> int:
    from trainers.loop import train
    from trainers.run_plan import TrainConfig

    if args.replay_steps < 0:
        raise InvalidArgument(f"replay_steps={args.replay_steps!r} must be >= 0")
    out = _demo_dir(args.out)
    if (out / "ledger").exists():
        raise UnusableInput(
            f"{out} already holds a run; pass a new --out (or audit it: dpverify audit {out})"
        )
    if out.exists() and not out.is_dir():
        raise UnusableInput(f"{out} is a file, not a run directory; pass a new --out")
    try:  # before the status line, so that a bad --out is one line on stderr
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UnusableInput(f"{out}: cannot create the run directory: {exc.strerror}") from None
    err = sys.stderr
    err.write(f"dpverify demo: training digits-mlp with masked DP-SGD into {out}/ ...\n")
    with _second_ctrl_c_exits():
        summary = train(
            TrainConfig(task="digits-mlp", seed=args.seed), out, progress=not args.quiet
        )
    sys.stdout.write(summary_text(summary, out) + "\n")
    from audits import run_audit

    err.write("dpverify demo: auditing the run ...\n")
    cert = run_audit(
        out,
        replay_steps=args.replay_steps or None,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    sys.stdout.write(_write_certificate(cert, out))
    return int(cert.exit_code)


def _write_certificate(cert: Any, out: Path) -> str:
    try:
        text = cert.summary_text()
    except Exception:  # the verdict line is enough
        text = ""
    lines = text.splitlines() if text else [f"verdict:     {str(cert.verdict).upper()}"]
    from audits import write_json, write_report

    cert_path, report_path = out / "certificate.json", out / "report.md"
    write_json(cert, cert_path)
    lines.append(f"certificate: {cert_path}")
    try:
        write_report(cert, report_path)
        lines.append(f"report:      {report_path}")
    except Exception as exc:  # a missing plotting backend must not hide the verdict
        lines.append(f"report:      not written ({type(exc).__name__}: {exc})")
    return "\n".join(lines) + "\n"
