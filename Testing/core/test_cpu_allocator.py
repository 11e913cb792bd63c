"""The glibc allocator setting that keeps CPU inference from page-faulting its activations in afresh."""

from __future__ import annotations

import ctypes.util
import sys

import pytest
from CochleaCommonLib import cpu_allocator


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    monkeypatch.setattr(cpu_allocator, "_applied", None)


def test_the_environment_switch_leaves_the_allocator_alone(monkeypatch):
    monkeypatch.setenv(cpu_allocator.ENV_SWITCH, "0")
    assert cpu_allocator.retain_freed_memory() is False
    assert cpu_allocator._applied is None


@pytest.mark.skipif(not sys.platform.startswith("linux") or not ctypes.util.find_library("c"),
                    reason="glibc's mallopt exists on Linux only")
def test_applied_once_and_remembered(monkeypatch):
    monkeypatch.delenv(cpu_allocator.ENV_SWITCH, raising=False)
    assert cpu_allocator.retain_freed_memory(256) is True
    assert cpu_allocator._applied == 256
    calls = []
    monkeypatch.setattr(cpu_allocator.ctypes, "CDLL", lambda *a, **k: calls.append(a))
    assert cpu_allocator.retain_freed_memory(128) is True  # already in force: nothing is called again
    assert calls == []


def test_not_glibc_is_not_an_error(monkeypatch):
    monkeypatch.delenv(cpu_allocator.ENV_SWITCH, raising=False)

    def no_libc(*_args, **_kwargs):
        raise OSError("no libc here")

    monkeypatch.setattr(cpu_allocator.ctypes, "CDLL", no_libc)
    assert cpu_allocator.retain_freed_memory() is False
