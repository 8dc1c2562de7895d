"""The process test framework itself: its wait names what it waited for and what it last saw, and
a network stops every process it started, whatever the test left running."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.framework import CONSENSUS, EXECUTION, Heads, Network, wait_until


def test_wait_until_returns_the_first_true_value() -> None:
    answers = itertools.count()
    assert wait_until(lambda: next(answers) >= 3 and "ready", timeout=5) == "ready"


def test_wait_until_names_the_predicate_and_its_last_value() -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        wait_until(lambda: len("four") == 5 and "never", timeout=0.05)
    message = str(failed.value)
    assert 'len("four") == 5' in message and "last value False" in message
    with pytest.raises(pytest.fail.Exception) as failed:
        wait_until(lambda: [], timeout=0.05, poll=0.01, what="an empty list to fill")
    assert "an empty list to fill" in str(failed.value) and "last value []" in str(failed.value)


def test_wait_until_refuses_an_unbounded_wait() -> None:
    with pytest.raises(ValueError, match="positive"):
        wait_until(lambda: True, timeout=0)


def test_heads_agree_only_when_equal_and_at_the_height_asked() -> None:
    same = {"a": (3, "ab" * 32), "b": (3, "ab" * 32)}
    assert Heads(same, None) and Heads(same, 3)
    assert not Heads(same, 4)
    assert not Heads({"a": (3, "ab" * 32), "b": (3, "cd" * 32)}, None)
    assert "a 3@abab" in repr(Heads(same, 4))


def test_every_process_is_stopped_at_the_end(tmp_path: Path) -> None:
    """Processes left running by a test (here a node whose consensus client judges with another
    node's execution client) are stopped by :meth:`Network.stop_all`, every one."""
    net = Network(tmp_path)
    try:
        execution = net.execution("execution")
        node = net.node("consensus", p2p=False, engines=[execution])
        assert node.height() == 0 and node.processes[0].role == CONSENSUS
        assert execution.processes[0].role == EXECUTION
        children = list(net.children)
        assert len(children) == 2
    finally:
        net.stop_all()
    assert all(child.proc.poll() is not None for child in children)
    assert not net.children and not node.processes
