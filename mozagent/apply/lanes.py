"""Lanes: each kind of work the executor runs, behind one small interface.

The executor runs one job at a time. Besides the coalesced puppet run of the
host's configs, work comes in lanes (Heat deployments, release installs,
orders; later a rollout step, a Heat-to-ZooKeeper publish): each lane says
whether it has work and hands over its next job, and ``pick`` alone decides
which lane goes next, for the daemon's loop and ``daemon --once`` alike. A new
kind of work is one class with ``pending``/``take`` and one line where the
daemon registers lanes.

Two phases, because puppet prepares the host for some work and not others:

* ``BEFORE_PUPPET`` (Heat deployments): runs as soon as it is there, ahead of
  a pending config run, but not while runs are held at start (the first read
  of ZooKeeper is under way: a deployment's puppet manifest reads that data).
* ``AFTER_PUPPET`` (installs, orders): waits while a config run is pending or
  running, since puppet creates the app's user, packages and vhost first. To
  keep a steady stream of data changes from starving it, a config run that
  ends with such work waiting gives it the next turn (``app_turn``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from mozagent.render.snapshot import Snapshot


class Phase(Enum):
    BEFORE_PUPPET = "before puppet"
    AFTER_PUPPET = "after puppet"


@dataclass(frozen=True)
class Job:
    """One piece of work, taken from a lane; ``run`` returns whether it succeeded."""

    label: str  # what status says the host is doing
    run: Callable[[], bool]


class Lane(Protocol):
    name: str
    phase: Phase

    def pending(self) -> bool:
        """Whether ``take`` would hand over a job now. Cheap: called on every pick."""
        ...

    def take(self, snapshot: Snapshot) -> Job | None:
        """The next job, removed from the lane (None when it has none after all).

        ``snapshot`` is the data the job may read (an install's MOZAGENT_DATA):
        the latest rendered one, taken under the executor's lock."""
        ...


@dataclass(frozen=True)
class Gate:
    """Where the config runs stand, as ``pick`` needs to know it."""

    held: bool = False  # runs held at start until the first read
    puppet_waiting: bool = False  # a config run is pending
    puppet_running: bool = False
    app_turn: bool = False  # the last config run ended with after-puppet work waiting
    after_puppet: bool = False  # the caller has just run puppet (``daemon --once``)


def pick(lanes: Sequence[Lane], gate: Gate) -> Lane | None:
    """The lane whose job goes next, or None (then a config run, or a wait).

    Pure apart from asking each lane ``pending()``; lanes of one phase go in
    the order they were registered.
    """
    if not gate.held:
        for lane in lanes:
            if lane.phase is Phase.BEFORE_PUPPET and lane.pending():
                return lane
    if gate.puppet_running:
        return None
    if not (gate.after_puppet or gate.app_turn) and (gate.held or gate.puppet_waiting):
        return None
    for lane in lanes:
        if lane.phase is Phase.AFTER_PUPPET and lane.pending():
            return lane
    return None


def waiting(lanes: Sequence[Lane], phase: Phase) -> bool:
    """Whether any lane of ``phase`` has work (a config run just ended: its turn?)."""
    return any(lane.phase is phase and lane.pending() for lane in lanes)
