"""Orders on the host: each run at most once, recorded before it starts.

Shove lost orders because it acknowledged nothing; an agent that ran a
command twice would be worse (a migration, a cache flush during traffic). So
the local record is the authority: ``<state_dir>/orders/<order>.json`` is
written and fsynced with state "running" *before* the command starts, and an
order with a record is never run again. An agent killed mid-order finds the
"running" record at restart and marks it failed (``recover``). Every result
stays ``published: false`` until whoever publishes it to ZooKeeper says it
landed, so a result is not lost to a ZooKeeper outage either.

``<state_dir>/orders/book.json`` holds two times: ``joined`` (the first start
of the agent on this host: older orders are history, not requests) and
``horizon`` (records of orders created before it were pruned; such orders are
ignored, since whether they ran is no longer known and must not be guessed).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

import structlog

from mozagent.apply.process import ChildApplier, ChildExit, ChildRunner
from mozagent.apply.runas import RunAs
from mozagent.apply.script import base_env
from mozagent.desired.orders import (
    FINAL_STATES,
    MAX_OUTPUT_BYTES,
    MAX_PROCFILE_BYTES,
    InvalidOrder,
    Order,
    OrderResult,
    Procfile,
    bound_output,
    expiry,
    order_seq,
    parse_order,
    parse_procfile,
    targets,
)
from mozagent.fileio import read_json_object, write_json

log = structlog.get_logger("mozagent")

INTERRUPTED = "interrupted: the agent stopped while it ran; not run again"
DAMAGED = "the local record of this order was damaged; it is not run again"

# One agent per state dir, but the runner (executor thread) and the publisher
# (report thread) share the book: a record and a "published" mark must not
# interleave, or a final result could be marked published unseen.
_LOCK = threading.Lock()


class OrderBook:
    """Durable local records of orders, one file each, plus ``joined``/``horizon``."""

    def __init__(self, state_dir: str, clock: Callable[[], float] = time.time) -> None:
        self.dir = os.path.join(state_dir, "orders")
        self.clock = clock
        self._book_path = os.path.join(self.dir, "book.json")
        self._book: dict[str, float] | None = None
        # Called after each record: the fleet report publishes "running" while
        # the order runs, not only its end.
        self.listeners: list[Callable[[], None]] = []
        # Names of records still to publish: read from disk once, then kept
        # here, so that publishing after every job does not read every record
        # the host ever kept.
        self._pending: set[str] | None = None

    # -- joined / horizon ---------------------------------------------------

    def _times(self) -> dict[str, float]:
        """Read once; a missing or damaged file starts over from now, which only
        ever expires more orders, never runs one twice."""
        if self._book is None:
            doc = read_json_object(self._book_path) or {}
            book = {k: float(v) for k, v in doc.items() if _is_time(v)}
            if "joined" not in book:
                book["joined"] = self.clock()
                book.setdefault("horizon", 0.0)
                self._save_times(book)
            self._book = book
        return self._book

    def _save_times(self, book: dict[str, float]) -> None:
        write_json(self._book_path, book, 0o600, durable=True)

    def joined(self) -> float:
        """When the agent first started on this host, recorded once."""
        with _LOCK:
            return self._times()["joined"]

    def forget_before(self, when: float) -> None:
        """Orders created before ``when`` are not this host's to answer (it
        took its node name over from another agent then): ignored like
        pruned ones, durably."""
        with _LOCK:
            times = self._times()
            if when > times.get("horizon", 0.0):
                times["horizon"] = when
                self._save_times(times)

    def forgotten(self, created: float) -> bool:
        """An order created before the pruning horizon: its record is gone."""
        with _LOCK:
            return created < self._times().get("horizon", 0.0)

    # -- records ------------------------------------------------------------

    def _path(self, name: str) -> str:
        order_seq(name)  # a name from ZooKeeper never becomes a path elsewhere
        return os.path.join(self.dir, f"{name}.json")

    def _names(self) -> list[str]:
        try:
            files = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        names = []
        for file in files:
            stem = file[: -len(".json")]
            if file.endswith(".json"):
                with contextlib.suppress(InvalidOrder):
                    names.append((order_seq(stem), stem))
        return [name for _, name in sorted(names)]

    def _read(self, name: str) -> tuple[OrderResult | None, dict[str, Any] | None]:
        doc = read_json_object(self._path(name))
        result = OrderResult.parse(doc.get("result")) if doc else None
        return result, doc

    def _write(self, result: OrderResult, published: bool, created: float | None) -> None:
        doc = {"result": result.to_doc(), "published": published, "created": created}
        write_json(self._path(result.order), doc, 0o600, durable=True)
        if self._pending is not None:
            (self._pending.discard if published else self._pending.add)(result.order)

    def _unpublished_names(self) -> set[str]:
        if self._pending is None:
            self._pending = set()
            for name in self._names():
                _, doc = self._read(name)
                if doc is not None and doc.get("published") is not True:
                    self._pending.add(name)
        return self._pending

    def seen(self, name: str) -> bool:
        """Any record, even a damaged one, means "do not run": it may have run."""
        return os.path.lexists(self._path(name))

    def get(self, name: str) -> OrderResult | None:
        with _LOCK:
            return self._read(name)[0]

    def record(self, result: OrderResult, created: float | None = None) -> None:
        """Durable (fsynced) before it returns; ``created`` (the order's ctime)
        lets ``prune`` move the horizon past it safely. Kept from an earlier
        record of the same order when not given."""
        with _LOCK:
            if created is None:
                _, doc = self._read(result.order)
                if doc and _is_time(doc.get("created")):
                    created = float(doc["created"])
            self._write(result, False, created)
        for listener in self.listeners:
            listener()

    def unpublished(self) -> list[OrderResult]:
        """Results still to publish, oldest order first ("running" ones too: the
        operator wants to see an order in progress)."""
        out = []
        with _LOCK:
            pending = self._unpublished_names()
            for name in sorted(pending, key=order_seq):
                result, doc = self._read(name)
                if result is not None and doc is not None and doc.get("published") is not True:
                    out.append(result)
                elif doc is None or doc.get("published") is True:
                    pending.discard(name)
        return out

    def mark_published(self, name: str, state: str) -> None:
        """Only if the record still holds ``state``: a final result recorded
        while "running" was being published must still be published itself."""
        with _LOCK:
            result, doc = self._read(name)
            if result is not None and doc is not None and result.state == state:
                created = doc.get("created")
                self._write(result, True, float(created) if _is_time(created) else None)

    def recover(self) -> list[OrderResult]:
        """At start, before anything runs: "running" records (the agent died
        while they ran) and damaged ones become failed; never run again."""
        changed = []
        with _LOCK:
            self._times()  # the first start is recorded before any order is judged
            for name in self._names():
                result, doc = self._read(name)
                if result is None:
                    result = OrderResult("", name, "", "failed", message=DAMAGED)
                elif result.state == "running":
                    result.state = "failed"
                    result.message = INTERRUPTED
                else:
                    continue
                result.ended = self.clock()
                created = doc.get("created") if doc else None
                self._write(result, False, float(created) if _is_time(created) else None)
                changed.append(result)
        return changed

    def prune(self, retention: float) -> int:
        """Forget published, final records of orders created over ``retention``
        seconds ago; how many went.

        The horizon moves first (durably), so every order whose record goes is
        one that ``forgotten`` ignores from then on: a pruned order still in
        ZooKeeper is never mistaken for a new one. ``retention`` should be well
        over the runner's ``max_age``, or a late host could ignore an order it
        would otherwise run.
        """
        with _LOCK:
            cutoff = self.clock() - retention
            times = self._times()
            doomed = []
            for name in self._names():
                result, doc = self._read(name)
                if result is None or doc is None or doc.get("published") is not True:
                    continue  # damaged ones wait for recover; unpublished ones for ZooKeeper
                created = doc.get("created")
                when = float(created) if _is_time(created) else result.ended
                if result.state in FINAL_STATES and when is not None and when < cutoff:
                    doomed.append(name)
            if not doomed:
                return 0
            if cutoff > times.get("horizon", 0.0):
                times["horizon"] = cutoff
                self._save_times(times)
            for name in doomed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(name))
            return len(doomed)


def _is_time(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


class OrderRunner(ChildApplier):
    """Runs orders for one app on this node, as the app's user, in its release."""

    def __init__(
        self,
        book: OrderBook,
        app: str,
        node: str,
        run_as: RunAs | str,
        runner: ChildRunner,
        timeout: float,
        procfile: str = "bin/commands.procfile",
    ) -> None:
        super().__init__(runner, timeout)
        self.book = book
        self.app = app
        self.node = node
        self.run_as = run_as
        self.procfile = procfile

    def handle(
        self,
        name: str,
        raw: bytes | None,
        created: float,
        where: str,
        release_dir: str | None,
        max_age: float,
        seen: float | None = None,
    ) -> OrderResult | None:
        """Everything one order znode needs, once: None when there is nothing
        to publish (already handled, forgotten, not for this node, or the
        agent is stopping: then it is left for the next start to consider)."""
        try:
            order_seq(name)
        except InvalidOrder:
            return None  # not an order (a stray znode): nothing to answer
        if self.cancel.is_set() or self.book.seen(name) or self.book.forgotten(created):
            return None
        # Its age when this host first saw it, not after the puppet run that
        # goes first: an agent back from a restart judges what it came back to.
        now = self.book.clock() if seen is None else seen
        why_old = expiry(created, now, self.book.joined(), max_age)
        try:
            order = parse_order(name, raw, created, where)
        except InvalidOrder as exc:
            if why_old is not None:  # old junk is history, like any old order
                junk = OrderResult(self.node, name, "", "expired", message=why_old)
                return self._final(junk, created)
            return self.refuse(name, where, str(exc), created)
        if not targets(order, self.node):
            return None
        if why_old is not None:
            return self.expire(order, why_old)
        # Whose change this host acts on (the CLI writes its ZooKeeper
        # identity and OS user into ``by``; `mozagent audit` has the why).
        log.info("order_accepted", order=name, command=order.command, by=order.by)
        return self.run(order, release_dir)

    def _final(self, result: OrderResult, created: float | None = None) -> OrderResult:
        result.ended = self.book.clock()
        self.book.record(result, created)
        return result

    def refuse(
        self, order_name: str, where: str, why: str, created: float | None = None
    ) -> OrderResult:
        """Recorded, so a malformed znode is answered once, not every poll."""
        message = why if why.startswith(where) else f"{where}: {why}"
        return self._final(
            OrderResult(self.node, order_name, "", "refused", message=message), created
        )

    def expire(
        self, order: Order, why: str = "the order was too old when this host first saw it"
    ) -> OrderResult:
        return self._final(
            OrderResult(self.node, order.name, order.command, "expired", message=why),
            order.created,
        )

    def _load_procfile(self, release: str) -> Procfile | str:
        """The procfile, or why it cannot be read.

        The agent (root) reads a file of the app's code, which the app's user
        may control: it must be a regular file inside the release (not a
        symlink to /etc/shadow whose lines would come back in "problems"), and
        bounded (not a FIFO that blocks or a file that fills memory).
        """
        path = os.path.join(release, self.procfile)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return f"{path} does not exist: this release allows no orders"
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror}"
        with os.fdopen(fd, "rb") as fh:
            real = os.readlink(f"/proc/self/fd/{fd}")
            if not real.startswith(release.rstrip("/") + "/"):
                return f"{path} leads outside the release ({real}): refused"
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return f"{path} is not a regular file"
            try:
                data = fh.read(MAX_PROCFILE_BYTES + 1)
            except OSError as exc:
                return f"cannot read {path}: {exc.strerror}"
        if len(data) > MAX_PROCFILE_BYTES:
            return f"{path} is over {MAX_PROCFILE_BYTES // 1024} KiB: not a procfile"
        return parse_procfile(data.decode("utf-8", errors="replace"), self.procfile)

    def run(self, order: Order, release_dir: str | None) -> OrderResult:
        """Run ``order`` once in the release; never raises for bad input, and
        returns the recorded result of an order already seen without rerunning."""
        if self.book.seen(order.name):
            previous = self.book.get(order.name)
            if previous is not None:
                return previous
            return OrderResult(self.node, order.name, order.command, "failed", message=DAMAGED)

        def final(state: str, message: str) -> OrderResult:
            result = OrderResult(self.node, order.name, order.command, state, message=message)
            return self._final(result, order.created)

        # Resolved once, so `current` flipping to the next release mid-order
        # cannot mix one release's procfile with another's files.
        release = os.path.realpath(release_dir) if release_dir else None
        if release is None or not os.path.isdir(release):
            return final("failed", f"no current release of {self.app} on this host to run it in")
        procfile = self._load_procfile(release)
        if isinstance(procfile, str):
            return final("refused", procfile)
        why = procfile.why_not(order.command, self.procfile)
        if why is not None:
            return final("refused", why)
        if isinstance(self.run_as, str):  # why there is no user to run it as
            return final("failed", f"cannot run it: {self.run_as}")
        result = OrderResult(
            self.node, order.name, order.command, "running", started=self.book.clock()
        )
        self.book.record(result, order.created)  # durable before anything starts
        env = {
            **base_env(),
            **self.run_as.env(),
            "MOZAGENT_APP": self.app,
            "MOZAGENT_NODE": self.node,
            "MOZAGENT_ORDER": order.name,
            "MOZAGENT_RELEASE_DIR": release,
        }
        out = self.child(
            ["/bin/sh", "-c", procfile.commands[order.command]],
            env,
            cwd=release,
            keep_bytes=MAX_OUTPUT_BYTES,
            run_as=self.run_as,
        )
        result.returncode, result.state, result.message = judge(out, self.timeout)
        text = out.stdout.partition("\n")[2] if out.trimmed else out.stdout
        result.output = bound_output(text, out.trimmed)
        return self._final(result, order.created)


def judge(out: ChildExit, timeout: float) -> tuple[int | None, str, str]:
    """(returncode, state, message) of a finished command, shell-style codes
    (128 + signal) so an operator reads them as they would in a terminal."""
    extra = f"; {out.leftovers()}" if out.leftovers_killed else ""
    failure = out.failure(timeout)
    if failure is None:
        return 0, "done", f"exited with status 0{extra}"
    if out.stopped == "aborted":
        failure += "; not run again"
    return out.code, "failed", failure + ("" if out.cleanup_error else extra)
