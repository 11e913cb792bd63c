"""glibc malloc tuning of the ``cochlea`` process: applied by the CLI, skipped where it must not apply."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest
from CochleaCommonLib import malloc_tuning


def _glibc() -> bool:
    try:
        return sys.platform.startswith("linux") and hasattr(ctypes.CDLL("libc.so.6"), "mallopt")
    except OSError:
        return False


@pytest.mark.skipif(not _glibc(), reason="mallopt is glibc's")
def test_the_thresholds_are_set_on_glibc():
    # In a child process: the setting lasts for the whole process.
    code = "from CochleaCommonLib.malloc_tuning import tune_malloc_for_batches as t; print(t())"
    env = {k: v for k, v in os.environ.items() if k not in malloc_tuning.USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("name", malloc_tuning.USER_SETTINGS)
def test_a_users_own_setting_is_kept(monkeypatch, name):
    monkeypatch.setenv(name, "131072")
    assert malloc_tuning.tune_malloc_for_batches() is False


def test_nothing_happens_off_linux(monkeypatch):
    monkeypatch.setattr(malloc_tuning.sys, "platform", "darwin")
    for name in malloc_tuning.USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert malloc_tuning.tune_malloc_for_batches() is False


def test_the_command_line_tunes_its_process(monkeypatch, capsys):
    from CochleaCommonLib.cli.main import main

    calls = []
    monkeypatch.setattr(malloc_tuning, "tune_malloc_for_batches", lambda: calls.append(1) or True)
    assert main(["models", "list"]) == 0
    assert calls == [1]
