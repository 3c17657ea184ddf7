"""Task registry: every task is listed, loads its data and builds a working model."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from dpverify.errors import InvalidArgument, UnusableInput
from trainers.tasks import TASKS, TEXT_VOCAB_SIZE, get_task

EXPECTED = {
    "digits-mlp",
    "digits-cnn",
    "digits-vit",
    "cifar10-cnn",
    "cifar10-vit",
    "text-transformer",
}
DEFAULT_KEYS = {
    "expected_batch_size",
    "noise_multiplier",
    "clip_norm",
    "steps",
    "learning_rate",
    "optimizer",
    "physical_batch_size",
}


def _data_path(task, tmp_path):
    """A tiny local file in the task's layout (None for embedded data)."""
    if not task.needs_data_path:
        return None
    rng = np.random.default_rng(0)
    path = tmp_path / f"{task.name}.npz"
    if task.name.startswith("cifar10"):
        x = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
        np.savez(path, x_train=x, y_train=np.arange(6) % 10)
    else:
        x = rng.integers(0, 30, size=(6, 12))
        np.savez(path, x_train=x, y_train=np.arange(6) % 2)
    return str(path)


def test_registry_lists_every_task():
    assert EXPECTED <= set(TASKS)
    for name, task in TASKS.items():
        assert task.name == name and get_task(name) is task
        assert DEFAULT_KEYS <= set(task.defaults)
        assert task.needs_data_path == (name.split("-")[0] in {"cifar10", "text"})


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_task_builds_and_runs(name, tmp_path):
    task = get_task(name)
    data = task.load_data(_data_path(task, tmp_path))
    model = task.make_model(data.num_classes)

    def init_and_apply(key, x_init, x):
        return model.apply(model.init(key, x_init), x)

    args = (jax.random.PRNGKey(0), data.x_train[:1], data.x_train[:2])
    if name == "cifar10-vit":  # shapes only: compiling the 6-block ViT costs ~15 s on CPU
        logits = jax.eval_shape(init_and_apply, *args)
    else:
        logits = jax.jit(init_and_apply)(*args)
        assert np.all(np.isfinite(np.asarray(logits)))
    assert logits.shape == (2, data.num_classes)


def test_unknown_task_is_one_line_invalid_argument():
    with pytest.raises(InvalidArgument, match=r"task='nope' is unknown.*digits-mlp") as info:
        get_task("nope")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if TASKS[n].needs_data_path))
def test_file_tasks_need_a_data_path(name, tmp_path):
    with pytest.raises(InvalidArgument, match="--data PATH"):
        get_task(name).load_data(None)
    with pytest.raises(UnusableInput, match=r"missing\.npz"):
        get_task(name).load_data(str(tmp_path / "missing.npz"))


def test_text_task_refuses_a_larger_vocabulary(tmp_path):
    path = tmp_path / "big.npz"
    np.savez(path, x_train=np.full((4, 3), TEXT_VOCAB_SIZE), y_train=np.arange(4) % 2)
    with pytest.raises(InvalidArgument, match=f"vocab_size={TEXT_VOCAB_SIZE + 1}"):
        get_task("text-transformer").load_data(str(path))
