"""The progress bar shows step, ε so far and loss on a terminal, and nothing otherwise."""

from __future__ import annotations

import io
import re
import sys

from trainers.progress import TrainingProgress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drive(monkeypatch, stream, **kw):
    monkeypatch.setattr(sys, "stderr", stream)
    bar = TrainingProgress(
        total=10, initial=0, sampling_rate=0.05, noise_multiplier=1.0, delta=1e-5, **kw
    )
    for t in range(10):
        bar.update(t, t + 1, 0.25)
    bar.close()
    return stream.getvalue()


def test_bar_shows_step_epsilon_and_loss_on_a_terminal(monkeypatch):
    text = _drive(monkeypatch, _Terminal(), enabled=True, label="digits-mlp [poisson]")
    final = text.split("\r")[-1]
    assert "10/10" in final and "loss=0.250" in final and "digits-mlp [poisson]" in final
    eps = float(re.search(r"eps=([0-9.]+)", final).group(1))
    assert 0 < eps < 10
    assert "WARNING" not in text


def test_bar_is_silent_when_disabled_or_not_a_terminal(monkeypatch):
    assert _drive(monkeypatch, _Terminal(), enabled=False) == ""
    assert _drive(monkeypatch, io.StringIO(), enabled=True) == ""
