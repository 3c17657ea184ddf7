"""dpverify.private_files: durable 0600 writes and the noise key."""

from __future__ import annotations

import os
import stat

import pytest

from dpverify.errors import UnusableInput
from dpverify.private_files import (
    NOISE_KEY_BYTES,
    create_noise_key,
    load_noise_key,
    noise_key_digest,
    write_private_file,
)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_file_is_0600_even_under_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        write_private_file(tmp_path / "deep" / "secret.bin", b"abc")
    finally:
        os.umask(old)
    assert (tmp_path / "deep" / "secret.bin").read_bytes() == b"abc"
    assert _mode(tmp_path / "deep" / "secret.bin") == 0o600
    assert _mode(tmp_path / "deep") == 0o700


def test_replacing_keeps_0600_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(b"old")
    os.chmod(path, 0o644)
    write_private_file(path, b"new")
    assert path.read_bytes() == b"new" and _mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "s"
    write_private_file(path, b"old")

    def broken_fsync(fd):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_private_file(path, b"new")
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_noise_key_is_fresh_private_and_never_overwritten(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    key_a, digest_a = create_noise_key(a)
    key_b, _ = create_noise_key(b)
    assert len(key_a) == NOISE_KEY_BYTES and key_a != key_b
    assert digest_a == noise_key_digest(key_a) and _mode(a / "noise.key") == 0o600
    with pytest.raises(UnusableInput, match="refusing to overwrite"):
        create_noise_key(a)
    assert load_noise_key(a, expected_digest=digest_a) == key_a


@pytest.mark.parametrize(
    ("content", "digest", "needle"),
    [(None, None, "cannot be read"), (b"short", None, "has 5 bytes"), (bytes(32), "0" * 64, "does not match")],
)
def test_bad_key_files_are_one_line_errors(tmp_path, content, digest, needle):
    if content is not None:
        (tmp_path / "noise.key").write_bytes(content)
    with pytest.raises(UnusableInput, match=needle) as info:
        load_noise_key(tmp_path, expected_digest=digest)
    assert "\n" not in str(info.value)
