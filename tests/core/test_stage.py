"""The one stage runtime: the loop's ends (done, duration, signal), stop after a failed start,
the ready event, signals ignored and put back."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from edge_agent.core.stage import run_stage


class Counting:
    """A stage that records its calls; ``process`` returns False after ``rounds`` calls, and
    ``on_process`` runs on each call (to send a signal from inside the loop)."""

    def __init__(self, rounds: int | None = None, fail_start: bool = False, on_process=None) -> None:
        self.rounds, self.fail_start, self.on_process = rounds, fail_start, on_process
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")
        if self.fail_start:
            raise RuntimeError("start failed")

    def process(self) -> bool:
        self.calls.append("process")
        if self.on_process is not None:
            self.on_process()
        return self.rounds is None or self.calls.count("process") < self.rounds

    def stop(self) -> None:
        self.calls.append("stop")


def test_runs_until_the_stage_is_done_and_stops_it() -> None:
    stage = Counting(rounds=3)
    run_stage(lambda: stage)
    assert stage.calls == ["start", "process", "process", "process", "stop"]


def test_a_duration_ends_an_endless_stage() -> None:
    stage = Counting()
    run_stage(lambda: stage, duration_s=0.05)
    assert stage.calls[0] == "start" and stage.calls[-1] == "stop" and "process" in stage.calls


def test_a_failed_start_is_still_stopped_and_handlers_are_put_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stage = Counting(fail_start=True)
    ready = threading.Event()
    with pytest.raises(RuntimeError, match="start failed"):
        run_stage(lambda: stage, ready=ready)
    assert stage.calls == ["start", "stop"] and not ready.is_set()
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_stop_signal_ends_the_loop_and_an_ignored_one_does_nothing() -> None:
    """The first round sends the ignored signal, the second the stop signal: two rounds, then stop."""
    heard: list[int] = []
    sent = iter([signal.SIGUSR2, signal.SIGUSR1])
    stage = Counting(rounds=10, on_process=lambda: os.kill(os.getpid(), next(sent)))
    ready = threading.Event()
    run_stage(
        lambda: stage,
        stop_on=(signal.SIGUSR1,),
        ignore=(signal.SIGUSR2,),
        ready=ready,
        on_signal=heard.append,
    )
    assert ready.is_set() and heard == [signal.SIGUSR1]
    assert stage.calls == ["start", "process", "process", "stop"]
