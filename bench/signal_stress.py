"""Stress `doit -n 2 -P process` with signals at random moments; count what goes wrong.

    python bench/signal_stress.py [RUNS] [MAX_DELAY_S] [--verify N]

Each run builds a fresh copy of one generated dataset, sends SIGINT (to the run's process
group, as Ctrl-C does) or SIGTERM (to the run alone, as `kill` does) after a random delay,
and classifies the outcome ("early-" when the signal came before the dodo file took the
root's lock: Python's own handling then, which no dodo file can change). With --verify N,
every Nth interrupted run is finished by a second `doit` and its table compared with an
unbroken build.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(os.environ.get("SHARDPREP_REPO", Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(REPO))

from sample.generate import make_dataset, write_config  # noqa: E402
from state.lock import lock_path  # noqa: E402

ONE_LINE = "interrupted; run doit again (nothing half-done counts as done)"
HANG_S = 60
LATENCIES: list[float] = []  # seconds from the signal to the run's exit


def _doit(root: Path, *args: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "doit", f"config={root / 'dataset.toml'}", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        **popen,
    )


def _table(root: Path) -> list:
    import pyarrow.parquet as pq

    return sorted(map(str, pq.read_table(root / "dalle3.parquet").to_pylist()))


def _holds_lock(root: Path, pid: int) -> bool:
    try:
        return lock_path(root).read_text().split("\n", 1)[0] == str(pid)
    except OSError:
        return False


def one_run(base: Path, work: Path, delay: float, signum: int, verify: bool) -> str:
    """The outcome of one interrupted run: ok, finished, traceback, hang, bad-exit, ..."""
    root = work / "ds"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, root)
    run = _doit(root, "-n", "2", "-P", "process", start_new_session=True)
    time.sleep(delay)
    prefix = "" if _holds_lock(root, run.pid) else "early-"  # before the dodo file ran
    sent = time.monotonic()
    if run.poll() is None:
        if signum == signal.SIGINT:
            os.killpg(run.pid, signum)
        else:
            run.send_signal(signum)
    try:
        out, err = run.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        run.communicate()
        return prefix + "hang"
    LATENCIES.append(time.monotonic() - sent)
    if "Traceback" in err or "Exception ignored" in err:
        print(f"--- delay {delay:.3f} sig {signum} rc {run.returncode}\n{err}", file=sys.stderr)
        return prefix + "traceback"
    if run.returncode == 0:
        return "finished"  # before the signal came
    if run.returncode != 128 + signum:
        print(f"--- delay {delay:.3f} rc {run.returncode}\n{err}", file=sys.stderr)
        return prefix + "bad-exit"
    if err.strip().splitlines() not in ([ONE_LINE], []):
        print(f"--- delay {delay:.3f} stderr\n{err}", file=sys.stderr)
        return prefix + "extra-stderr"
    if not err.strip():
        return prefix + "silent"
    if verify:
        again = _doit(root)
        out, err = again.communicate(timeout=300)
        if again.returncode != 0:
            print(f"--- next run rc {again.returncode}\n{out}\n{err}", file=sys.stderr)
            return "next-run-fails"
        if _table(root) != _table(base.parent / "ref"):
            return "next-run-differs"
    return "ok"


def main() -> None:
    """Run the loop and print the counts."""
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    runs = int(args[0]) if args else 60
    max_delay = float(args[1]) if len(args) > 1 else 2.0
    verify_every = int(sys.argv[sys.argv.index("--verify") + 1]) if "--verify" in sys.argv else 0
    rng = random.Random(int(os.environ.get("SEED", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        make_dataset(base, shards=4, samples_per_shard=20)
        write_config(base)
        ref = Path(tmp) / "ref"
        shutil.copytree(base, ref)
        write_config(ref)
        subprocess.run(
            [sys.executable, "-m", "doit", f"config={ref / 'dataset.toml'}"],
            cwd=REPO,
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        counts: collections.Counter[str] = collections.Counter()
        start = time.monotonic()
        for i in range(runs):
            delay = rng.uniform(0, max_delay)
            signum = signal.SIGINT if i % 2 == 0 else signal.SIGTERM
            verify = bool(verify_every) and i % verify_every == 0
            before = len(LATENCIES)
            outcome = one_run(base, Path(tmp) / "w", delay, signum, verify)
            if len(LATENCIES) > before:
                outcome += f" (exit {LATENCIES[-1]:.2f} s after the signal)"
            counts[outcome.split(" (")[0]] += 1
            print(f"{i:3d} {delay:.3f}s {signal.Signals(signum).name:7s} {outcome}", flush=True)
        print(f"{runs} runs in {time.monotonic() - start:.0f} s: {dict(counts)}")
        median = sorted(LATENCIES)[len(LATENCIES) // 2]
        print(f"signal to exit: max {max(LATENCIES):.2f} s, median {median:.2f} s")


if __name__ == "__main__":
    main()
