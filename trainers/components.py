"""Build a run's model, optimiser and initial state from its plan.

Shared by the training loop and by replay, so that both rebuild exactly the
same parameter and optimiser trees (the templates checkpoints are restored
against).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trainers.run_plan import RunPlan

__all__ = ["Components", "build_components", "count_params", "make_optimizer"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Components:
    """Model and optimiser of a run.

    Attributes:
        model: the Flax module.
        model_apply: ``model_apply(params, x) -> logits``.
        optimizer: the Optax gradient transformation.
        params: freshly initialised parameters.
        opt_state: ``optimizer.init(params)``.
    """

    model: Any
    model_apply: Any
    optimizer: Any
    params: Any
    opt_state: Any


def make_optimizer(name: str, learning_rate: float) -> Any:
    """The Optax optimiser ``name`` (``adam``, ``sgd``, ``momentum``) at ``learning_rate``."""
    import optax

    if name == "adam":
        return optax.adam(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate)
    if name == "momentum":
        return optax.sgd(learning_rate, momentum=0.9)
    from dpverify.errors import InvalidArgument

    raise InvalidArgument(f"optimizer={name!r} must be one of adam, sgd, momentum")


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    import jax

    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))


def init_model(task_name: str, num_classes: int, sample_x: Any, init_seed: int) -> tuple:
    """``(model, model_apply, params)`` for a task, initialised from ``init_seed``."""
    import jax

    from trainers.tasks import get_task

    model = get_task(task_name).make_model(num_classes)
    key = jax.random.fold_in(jax.random.PRNGKey(int(init_seed)), 0x1417)
    params = model.init(key, sample_x)["params"]

    def model_apply(p: Any, x: Any) -> Any:
        return model.apply({"params": p}, x)

    return model, model_apply, params


def build_components(plan: RunPlan, dataset: Any, init_seed: int) -> Components:
    """Model, optimiser and initial state for ``plan`` on ``dataset``."""
    model, model_apply, params = init_model(
        plan.task, dataset.num_classes, dataset.x_train[:1], init_seed
    )
    optimizer = make_optimizer(plan.optimizer, plan.learning_rate)
    return Components(
        model=model,
        model_apply=model_apply,
        optimizer=optimizer,
        params=params,
        opt_state=optimizer.init(params),
    )
