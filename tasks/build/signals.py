"""Ctrl-C and SIGTERM end a run with one line, also under `doit -n N -P process`.

The run's main process prints the line, stops doit's workers with SIGTERM and exits with
128 + the signal's number (doit saves its state on the way out; the manifest knows what is
done). The signals are held while doit forks a worker, so that no handler runs inside the
fork's own hooks (where Python prints what it raises and goes on); a worker ignores Ctrl-C
(the main process decides) and stops at SIGTERM, telling the main process through doit's
result queue, so that doit never waits for a result that will not come.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType

from doit import runner

INTERRUPTED = "interrupted; run doit again (nothing half-done counts as done)"
SIGNALS = {signal.SIGINT, signal.SIGTERM}
PR_SET_PDEATHSIG = 1  # prctl option: a signal for this process when its parent dies
WORKER_GRACE_S = 10.0  # how long the main process waits for a stopped worker before killing it

_main_pid = os.getpid()
_interrupted_by: int | None = None
_exiting = False


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
    if signal.getsignal(signal.SIGINT) is _interrupted:
        _hook_doit_workers()
        atexit.register(_hold_signals_for_good)


def _interrupted(signum: int, frame: FrameType | None) -> None:
    global _interrupted_by
    if os.getpid() != _main_pid:  # a process forked by a task, not one of doit's workers
        raise SystemExit(128 + signum)
    if _interrupted_by is None:
        _interrupted_by = signum
        print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)
        _stop_workers()
    code = 128 + _interrupted_by  # the shell's code for a run ended by this signal
    if _exiting or sys.is_finalizing():  # an exception now would be printed, then ignored
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(code)
    raise SystemExit(code)


def _hold_signals_for_good() -> None:
    """At exit: hold the signals from here on. The run is over; Python restores the default
    handlers while it shuts down, and a signal then would kill it without a word."""
    global _exiting
    _exiting = True
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """A handler that does nothing: unlike SIG_IGN, it cannot race with a signal Python has
    noted but not yet handled ("Signal N ignored due to race condition")."""


def _stop_workers() -> None:
    """SIGTERM to doit's workers; at exit, kill those that outlive a grace period, so that
    the exit (which joins them) cannot hang."""
    # a second signal must not cut the exit short
    signal.signal(signal.SIGINT, _ignore)
    signal.signal(signal.SIGTERM, _ignore)
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


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM; one that came meanwhile is handled on leaving."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _Worker(runner.Process):
    """doit's worker process (`-P process`) with the signal handling described above."""

    def start(self) -> None:
        """Fork with the signals held: the worker starts with them held too, and the main
        process handles one that came during the fork after it (and stops the new worker)."""
        with _signals_held():
            super().start()

    def run(self) -> None:
        """In the worker: set its own handlers, then let the held signals in."""
        job_q, result_q, _ = self._args  # type: ignore[attr-defined]
        # Ctrl-C reaches the whole process group: the main process decides, then stops us
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _stop_worker)
        _die_with_parent(self._parent_pid)  # type: ignore[attr-defined]
        try:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
            super().run()
        except WorkerStopped:  # before doit's loop began: tell the main process ourselves
            result_q.put({"exit": WorkerStopped, "exception": ""})


def _stop_worker(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, _ignore)
    raise WorkerStopped


def _die_with_parent(parent: int) -> None:
    """A worker whose main process was killed (SIGKILL) gets SIGTERM instead of waiting
    for a job forever."""
    with contextlib.suppress(OSError, AttributeError):  # Linux only
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the main process died before prctl took effect
        os._exit(128 + signal.SIGTERM)


def _hook_doit_workers() -> None:
    """Make doit's process runner start `_Worker`s and end the run on a stopped worker."""
    mrunner = runner.MRunner
    if getattr(mrunner, "_shardprep_hooked", False):
        return
    # doit compares `self.Child == Process` to tell processes from threads: swap both
    runner.Process = _Worker  # type: ignore[misc]
    mrunner.Child = staticmethod(_Worker)
    run_tasks = mrunner.run_tasks

    def run_tasks_ending_on_a_stopped_worker(self, task_dispatcher) -> None:
        try:
            run_tasks(self, task_dispatcher)
        except WorkerStopped:  # SIGTERM reached a worker first (`kill` of the whole group)
            _interrupted(signal.SIGTERM, None)

    mrunner.run_tasks = run_tasks_ending_on_a_stopped_worker
    mrunner._shardprep_hooked = True
