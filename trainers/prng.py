"""Pinned randomness: the PRNG implementation and flags the noise is drawn with.

JAX's random bits depend on the PRNG implementation (``threefry2x32`` by
default, ``rbg`` and ``unsafe_rbg`` exist) and, for threefry, on the
``jax_threefry_partitionable`` flag (its default changed in JAX 0.5.0: the
same key then gives different normals).  A run's noise is therefore only
reproducible under the setting it was drawn with, so:

* the trainer draws under :data:`PRNG_IMPL` with the partitionable flag set
  explicitly to :data:`THREEFRY_PARTITIONABLE` (:func:`noise_context`), and
  the noise key is a typed key of that implementation (:func:`wrap_noise_key`),
  whatever the process's defaults;
* the ledger header records them (``extra["prng"]``, :func:`prng_record`);
* replay draws under the recorded setting, or — when this JAX cannot
  reproduce it (unknown implementation, nothing recorded) — is *skipped*
  with that reason (:func:`replay_setting`), never refuted.

The reference trainer has its own copy of the rule (it shares no code with
the trainer); both read the recorded setting from the ledger.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "PRNG_IMPL",
    "THREEFRY_PARTITIONABLE",
    "noise_context",
    "prng_record",
    "replay_setting",
    "wrap_noise_key",
]

#: The PRNG implementation the trainer draws noise with.
PRNG_IMPL = "threefry2x32"
#: The value of ``jax_threefry_partitionable`` the trainer draws noise with.
THREEFRY_PARTITIONABLE = True


def prng_record() -> dict[str, Any]:
    """What the ledger header records (``extra["prng"]``)."""
    return {"impl": PRNG_IMPL, "threefry_partitionable": THREEFRY_PARTITIONABLE}


@contextlib.contextmanager
def noise_context(partitionable: bool = THREEFRY_PARTITIONABLE) -> Iterator[None]:
    """Set ``jax_threefry_partitionable`` for the calls (and traces) inside."""
    import jax

    with jax.threefry_partitionable(bool(partitionable)):
        yield


def wrap_noise_key(key: Any, impl: str = PRNG_IMPL) -> Any:
    """``key`` as a typed key of ``impl``: raw ``uint32`` key data are wrapped;
    a typed key must already be of ``impl``.

    Raises:
        InvalidArgument: a typed key of another implementation.
    """
    import jax
    import jax.numpy as jnp

    if jnp.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):  # type: ignore[arg-type]
        name = str(jax.random.key_impl(key))
        if impl not in name:
            from dpverify.errors import InvalidArgument

            raise InvalidArgument(f"noise key implementation {name!r} must be {impl!r}")
        return key
    return jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32), impl=impl)


def replay_setting(extra: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    """The recorded PRNG setting if this JAX can reproduce it, else ``(None, reason)``."""
    rec = dict(extra or {}).get("prng")
    if not isinstance(rec, Mapping):
        return None, "the ledger does not record the PRNG setting its noise was drawn with"
    impl, part = rec.get("impl"), rec.get("threefry_partitionable")
    if impl != PRNG_IMPL:
        return None, f"the noise was drawn with PRNG {impl!r}; this replay supports {PRNG_IMPL!r}"
    if not isinstance(part, bool):
        return None, f"the recorded jax_threefry_partitionable={part!r} is not a boolean"
    try:
        import jax

        jax.threefry_partitionable  # noqa: B018 - the flag exists in this JAX
    except AttributeError:  # pragma: no cover - very old JAX
        return None, "this JAX cannot set jax_threefry_partitionable"
    return {"impl": impl, "threefry_partitionable": part}, None
