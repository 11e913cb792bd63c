"""Progress/cancel protocol: clamping, monotonic values, nested ranges, cancel paths, the text bar."""

from __future__ import annotations

import io
import math
import threading

import pytest
from CochleaCommonLib.errors import OperationCancelled
from CochleaCommonLib.progress import CancelToken, Progress, TextProgressBar, render_bar


class Recorder:
    def __init__(self, cancel_at: float | None = None):
        self.calls: list[tuple[float, str]] = []
        self.cancel_at = cancel_at

    def __call__(self, fraction, message):
        self.calls.append((fraction, message))
        return self.cancel_at is not None and fraction >= self.cancel_at

    @property
    def fractions(self):
        return [f for f, _ in self.calls]


def test_cancel_token():
    token = CancelToken()
    assert not token.cancelled
    token.raise_if_cancelled()
    token.cancel()
    assert token.cancelled
    with pytest.raises(OperationCancelled, match="cancelled"):
        token.raise_if_cancelled()


def test_update_clamps_and_never_goes_back():
    rec = Recorder()
    p = Progress(rec)
    for value in (-0.5, 0.3, 0.2, float("nan"), 0.7, 5.0):
        p.update(value, "step")
    assert rec.fractions == [0.0, 0.3, 0.3, 0.3, 0.7, 1.0]
    assert p.fraction == 1.0


def test_empty_message_keeps_the_previous_one():
    rec = Recorder()
    p = Progress(rec)
    p.update(0.1, "Loading")
    p.update(0.2)
    assert rec.calls == [(0.1, "Loading"), (0.2, "Loading")]


def test_sub_ranges_map_onto_the_parent():
    rec = Recorder()
    p = Progress(rec)
    p.sub(0.2, 0.6).update(0.5)
    assert rec.fractions[-1] == pytest.approx(0.4)
    nested = p.sub(0.5, 1.0).sub(0.5, 1.0)
    nested.update(0.5)
    assert rec.fractions[-1] == pytest.approx(0.875)
    nested.update(1.0)
    assert rec.fractions[-1] == pytest.approx(1.0)


def test_sibling_subranges_stay_monotonic_for_the_listener():
    rec = Recorder()
    p = Progress(rec)
    p.sub(0.5, 1.0).update(1.0)
    p.sub(0.0, 0.5).update(0.5)  # a late report from an earlier step
    assert rec.fractions == [1.0, 1.0]


def test_sub_rejects_reversed_range():
    with pytest.raises(ValueError):
        Progress().sub(0.8, 0.2)


def test_callback_returning_true_cancels_at_that_update():
    rec = Recorder(cancel_at=0.5)
    p = Progress(rec)
    p.update(0.4)
    with pytest.raises(OperationCancelled):
        p.update(0.5)
    assert p.cancelled and p.cancel_token.cancelled
    with pytest.raises(OperationCancelled):
        p.sub(0.0, 1.0).check()  # sub-ranges share the token


def test_callback_returning_other_values_does_not_cancel():
    p = Progress(lambda f, m: 1)  # truthy but not True (Slicer's convention is `True` only)
    p.update(0.5)
    assert not p.cancelled


def test_iterate_reports_each_item_and_stops_on_cancel():
    token = CancelToken()
    rec = Recorder()
    p = Progress(rec, token)
    seen = []
    with pytest.raises(OperationCancelled):
        for item in p.iterate(range(10), message="slices"):
            seen.append(item)
            if item == 3:
                token.cancel()
    assert seen == [0, 1, 2, 3]
    assert rec.fractions == pytest.approx([0.1, 0.2, 0.3, 0.4])  # item 3 finished, then the cancel stops it
    assert rec.calls[0][1] == "slices"


def test_iterate_over_a_generator_uses_total_or_only_checks_cancel():
    rec = Recorder()
    p = Progress(rec)
    assert list(p.iterate((x for x in "abcd"), total=4)) == list("abcd")
    assert rec.fractions == pytest.approx([0.25, 0.5, 0.75, 1.0])
    rec2 = Recorder()
    assert list(Progress(rec2).iterate(x for x in "ab")) == ["a", "b"]
    assert rec2.calls == []


def test_cancel_from_another_thread_stops_the_worker():
    token = CancelToken()
    started = threading.Event()
    outcome = {}

    def work():
        p = Progress(cancel=token)
        try:
            i = 0
            while True:
                i += 1
                started.set()
                p.update(min(0.99, i / 1e7))
        except OperationCancelled:
            outcome["cancelled"] = True

    worker = threading.Thread(target=work)
    worker.start()
    started.wait(5)
    token.cancel()
    worker.join(5)
    assert not worker.is_alive() and outcome == {"cancelled": True}


def test_ensure():
    p = Progress()
    assert Progress.ensure(p) is p
    rec = Recorder()
    Progress.ensure(rec).update(0.5, "x")
    assert rec.calls == [(0.5, "x")]
    Progress.ensure(None).update(0.5)  # no-op, no error


def test_render_bar():
    assert render_bar(0.42, "Downloading", width=10) == "[####------]  42% Downloading"
    assert render_bar(0.0, width=4) == "[----]   0%"
    assert render_bar(1.0, width=4) == "[####] 100%"
    assert render_bar(math.nan, width=4) == "[----]   0%"


def test_text_bar_in_a_log_prints_about_every_tenth():
    out = io.StringIO()
    bar = TextProgressBar(out, width=10)
    for i in range(101):
        bar(i / 100, "Working")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "[----------]   0% Working"
    assert lines[-1] == "[##########] 100% Working"
    assert len(lines) == 11


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_text_bar_on_a_terminal_redraws_one_line_and_throttles():
    out = FakeTerminal()
    now = [0.0]
    bar = TextProgressBar(out, width=10, min_interval=0.5, clock=lambda: now[0])
    bar(0.1, "a")
    bar(0.2, "a")  # within 0.5 s, same message: skipped
    now[0] = 1.0
    bar(0.3, "a")
    bar(0.4, "b")  # a new message is always shown
    bar(1.0, "b")  # completion is always shown
    bar.close()
    text = out.getvalue()
    assert "\n" not in text[:-1] and text.endswith("\n")
    frames = text.rstrip("\n").split("\r")[1:]
    assert [f.strip()[-6:] for f in frames] == [" 10% a", " 30% a", " 40% b", "100% b"]
