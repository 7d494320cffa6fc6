"""Ctrl-C and SIGTERM end a run with one line, also under `doit -n N -P process`.

The run's main process prints the line, stops doit's workers with SIGTERM and exits with
128 + the signal's number (doit saves its state on the way out; the manifest knows what is
done). A handler may raise only where the exception unwinds cleanly, so a signal is deferred
while the process forks (Python prints what a fork's hooks raise, and goes on), while doit
starts a worker (until the worker is registered, so that it is stopped too) and while a
queue takes a job or result (a lock taken and never released hangs the exit); one that
Python swallows all the same (a `__del__`, a weakref callback) is raised again. A worker
starts with the signals held, ignores Ctrl-C (the main process decides), and stops at
SIGTERM, telling the main process through doit's result queue, so that doit never waits for
a result that will not come.
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import ctypes
import multiprocessing
import multiprocessing.queues
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

from doit import runner

INTERRUPTED = "interrupted; run doit again (nothing half-done counts as done)"
SIGNALS = {signal.SIGINT, signal.SIGTERM}
PR_SET_PDEATHSIG = 1  # prctl option: a signal for this process when its parent dies
WORKER_GRACE_S = 5.0  # how long the main process waits for a stopped worker before killing it

_main_pid = os.getpid()
_interrupted_by: int | None = None
_exiting = False
_defer_depth = 0  # > 0: a handler records its signal instead of acting on it
_deferred: int | None = None
_raise_again = False  # our exception was raised where Python prints it and goes on


class WorkerStopped(KeyboardInterrupt):
    """A doit worker got SIGTERM; it travels to the main process through doit's result queue
    (doit passes on KeyboardInterrupt), where it ends the run as an interrupt."""


def on_interrupt_say_one_line() -> None:
    """Install the handlers in this (the run's main) process and doit's worker hooks."""
    global _main_pid
    _main_pid = os.getpid()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _interrupted)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupted)
    if signal.getsignal(signal.SIGINT) is _interrupted and _hook_doit_workers():
        os.register_at_fork(
            before=_before_fork,
            after_in_parent=_after_fork_in_parent,
            after_in_child=_after_fork_in_child,
        )
        atexit.register(_hold_signals_for_good)
        sys.unraisablehook = _unraisable


def _interrupted(signum: int, frame: FrameType | None) -> None:
    global _interrupted_by
    if os.getpid() != _main_pid:  # a process forked by a task, not one of doit's workers
        raise SystemExit(128 + signum)
    if _defer(signum):
        return
    if _interrupted_by is None:
        _interrupted_by = signum
        print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)
        _stop_workers()
    elif not _taking_up_a_swallowed_raise():
        return  # a second signal must not cut the exit short
    code = 128 + _interrupted_by  # the shell's code for a run ended by this signal
    if _exiting or sys.is_finalizing():  # an exception now would be printed, then ignored
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(code)
    raise SystemExit(code)


def _defer(signum: int) -> bool:
    """Record the signal for the end of the deferring section, if one is under way."""
    global _deferred
    if _defer_depth == 0:
        return False
    if _deferred is None:
        _deferred = signum
    return True


def _handle_deferred() -> None:
    """Call the handler of a signal recorded while deferring; it may raise."""
    global _deferred
    if _defer_depth == 0 and _deferred is not None:
        signum, _deferred = _deferred, None
        handler = signal.getsignal(signum)
        if callable(handler):
            handler(signum, None)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM (a thread forked meanwhile inherits that) and defer their
    handlers (the signal may reach another thread); handle one that came on leaving."""
    global _defer_depth
    _defer_depth += 1
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        _defer_depth -= 1
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a held signal is handled here
        _handle_deferred()


def _before_fork() -> None:
    global _defer_depth
    _defer_depth += 1


def _after_fork_in_parent() -> None:
    global _defer_depth, _deferred
    _defer_depth -= 1
    if _defer_depth == 0 and _deferred is not None:
        signum, _deferred = _deferred, None
        _thread.interrupt_main(signum)  # handled once the fork has returned, not in its hooks


def _after_fork_in_child() -> None:
    global _defer_depth, _deferred
    _defer_depth, _deferred = 0, None  # the signal was the parent's


def _taking_up_a_swallowed_raise() -> bool:
    global _raise_again
    again, _raise_again = _raise_again, False
    return again


def _unraisable(unraisable: Any) -> None:
    """Python swallowed what a handler of ours raised (it ran in a fork hook, a `__del__`, a
    weakref callback): say nothing and raise it again at the main thread's next step."""
    global _raise_again
    if not isinstance(unraisable.exc_value, SystemExit | WorkerStopped):
        _previous_unraisable(unraisable)
        return
    ours = _interrupted_by if os.getpid() == _main_pid else signal.SIGTERM
    if ours is None:
        _previous_unraisable(unraisable)
        return
    _raise_again = True
    _thread.interrupt_main(ours)


_previous_unraisable = sys.unraisablehook


def _stop_workers() -> None:
    """SIGTERM to doit's workers; at exit, kill those that outlive a grace period, so that
    the exit (which joins them) cannot hang."""
    for child in multiprocessing.active_children():
        with contextlib.suppress(OSError):
            os.kill(child.pid, signal.SIGTERM)
    atexit.register(_reap_workers)  # runs before multiprocessing's own join of its children


def _reap_workers() -> None:
    for child in multiprocessing.active_children():
        child.join(WORKER_GRACE_S)
        if child.is_alive():
            child.kill()
            child.join()


def _hold_signals_for_good() -> None:
    """At exit: hold the signals from here on. The run is over; Python restores the default
    handlers while it shuts down, and a signal then would kill it without a word."""
    global _exiting
    _exiting = True
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


class _Worker(runner.Process):
    """doit's worker process (`-P process`) with the signal handling described above."""

    def start(self) -> None:
        """Fork with the signals held and deferred until the worker is registered."""
        with _signals_deferred():
            super().start()

    def run(self) -> None:
        """In the worker: set its own handlers, then let the held signals in."""
        _, result_q, _ = self._args  # type: ignore[attr-defined]
        # Ctrl-C reaches the whole process group: the main process decides, then stops us
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _stop_worker)
        _die_with_parent(self._parent_pid)  # type: ignore[attr-defined]
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            super().run()
        except WorkerStopped:  # before doit's loop began: tell the main process ourselves
            result_q.put({"exit": WorkerStopped, "exception": ""})


_worker_stopping = False


def _stop_worker(signum: int, frame: FrameType | None) -> None:
    global _worker_stopping
    if _defer(signum):
        return
    if _worker_stopping and not _taking_up_a_swallowed_raise():
        return  # doit's own SIGTERM after ours: the worker is stopping already
    _worker_stopping = True
    raise WorkerStopped


_LIBC = None
with contextlib.suppress(OSError):  # loaded here: a forked worker must not load libraries
    _LIBC = ctypes.CDLL(None, use_errno=True)


def _die_with_parent(parent: int) -> None:
    """A worker whose main process was killed (SIGKILL) gets SIGTERM instead of waiting
    for a job forever."""
    with contextlib.suppress(AttributeError):  # prctl: Linux only
        if _LIBC is not None:
            _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the main process died before prctl took effect
        os._exit(128 + signal.SIGTERM)


class _Queue(multiprocessing.queues.Queue):
    """doit's job and result queue; `put` takes a lock that an exception raised inside it
    could leave taken, so signals wait for its end."""

    def __init__(self) -> None:
        super().__init__(ctx=multiprocessing.get_context())

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None:
        """Queue `obj`, with signals deferred."""
        with _signals_deferred():
            super().put(obj, block, timeout)


def _hook_doit_workers() -> bool:
    """Make doit's process runner start `_Worker`s on `_Queue`s and end the run on a stopped
    worker; False if that was done already."""
    mrunner = runner.MRunner
    if getattr(mrunner, "_shardprep_hooked", False):
        return False
    # doit compares `self.Child == Process` to tell processes from threads: swap both
    runner.Process = _Worker  # type: ignore[misc]
    mrunner.Child = staticmethod(_Worker)
    mrunner.Queue = staticmethod(_Queue)
    run_tasks = mrunner.run_tasks

    def run_tasks_ending_on_a_stopped_worker(self: runner.MRunner, task_dispatcher: Any) -> None:
        try:
            run_tasks(self, task_dispatcher)
        except WorkerStopped:  # SIGTERM reached a worker first (`kill` of the whole group)
            _interrupted(signal.SIGTERM, None)

    mrunner.run_tasks = run_tasks_ending_on_a_stopped_worker
    mrunner._shardprep_hooked = True
    return True
