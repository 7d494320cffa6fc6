"""Summaries of cProfile files: the top functions by cumulative and by self time.

`bench/run.py --profile` runs each of shardprep's steps once more under
`python -m cProfile -o FILE -m doit ...` (serial: cProfile sees the main thread of one
process only) and keeps these summaries in its result JSON and a text file.
"""

from __future__ import annotations

import pstats
import sysconfig
from pathlib import Path

TOP = 15


def short_name(func: tuple[str, int, str], repo: Path) -> str:
    """`file:line(function)` with the repository or site-packages prefix cut off."""
    text = pstats.func_std_string(func)
    if func[0].startswith(str(repo) + "/"):
        return text[len(str(repo)) + 1 :]
    marker = "site-packages/"
    if marker in func[0]:
        return text[text.index(marker) + len(marker) :]
    stdlib = sysconfig.get_paths()["stdlib"] + "/"
    if func[0].startswith(stdlib):
        return text[len(stdlib) :]
    return text


def is_wrapper(func: tuple[str, int, str]) -> bool:
    """Frames that only wrap the build (interpreter start, imports, doit's runner): left
    out of the cumulative list, where they would fill the top with the whole run's time."""
    filename, _line, name = func
    return (
        filename.startswith(("<frozen", "<string>"))
        or "/doit/" in filename
        or name in ("<built-in method builtins.exec>", "<built-in method builtins.__import__>")
    )


def summarize(prof_file: Path, repo: Path, top: int = TOP) -> dict:
    """Total profiled time, time in imports, and the `top` functions by cumulative time
    (wrappers left out) and by self time."""
    stats = pstats.Stats(str(prof_file))
    entries = stats.stats  # type: ignore[attr-defined]  # func -> (cc, nc, tt, ct, callers)

    def rows(column: int, skip_wrappers: bool) -> list[dict]:
        chosen = [kv for kv in entries.items() if not (skip_wrappers and is_wrapper(kv[0]))]
        ordered = sorted(chosen, key=lambda kv: kv[1][column], reverse=True)
        return [
            {
                "function": short_name(func, repo),
                "ncalls": nc,
                "self_s": round(tt, 4),
                "cumulative_s": round(ct, 4),
            }
            for func, (_cc, nc, tt, ct, _callers) in ordered[:top]
        ]

    imports = [ct for f, (_cc, _nc, _tt, ct, _c) in entries.items() if f[2] == "_find_and_load"]
    return {
        "total_s": round(stats.total_tt, 4),  # type: ignore[attr-defined]
        "calls": stats.total_calls,  # type: ignore[attr-defined]
        "imports_s": round(max(imports, default=0.0), 4),
        "by_cumulative": rows(3, skip_wrappers=True),
        "by_self": rows(2, skip_wrappers=False),
    }


def format_rows(rows: list[dict]) -> list[str]:
    """A summary's rows as aligned text lines."""
    lines = [f"{'ncalls':>10} {'self s':>8} {'cum s':>8}  function"]
    lines += [
        f"{r['ncalls']:>10} {r['self_s']:8.3f} {r['cumulative_s']:8.3f}  {r['function']}"
        for r in rows
    ]
    return lines


def format_summary(step: str, summary: dict) -> str:
    """One step's summary as text: header, top by cumulative, top by self time."""
    head = (
        f"== {step}: {summary['total_s']:.2f} s profiled ({summary['calls']:,} calls), "
        f"{summary['imports_s']:.2f} s of it importing modules"
        + (f"; {summary['wall_s']:.2f} s wall under cProfile" if "wall_s" in summary else "")
    )
    return "\n".join(
        [
            head,
            "-- by cumulative time (interpreter, import and doit runner frames left out)",
            *format_rows(summary["by_cumulative"]),
        ]
        + ["-- by self time", *format_rows(summary["by_self"]), ""]
    )
