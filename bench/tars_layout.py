"""Time `layout = "tars"` against a sequential read of the tars (`cat` to /dev/null), in one run.

Issue 19's targets: the index build from local tars <= 1.1x the `cat`, a caption switch of
the indexes <= 0.02x it. Each timed step starts from a dropped page cache when this
process may drop it (root), else from a warm one (every tar read once before); the doit
runs start in a fresh root whose tars are hard links to the generated ones.

    .venv/bin/python bench/tars_layout.py --samples 1600 --shards 16 --large --workdir DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.run import CODE_WARMUP, drop_caches, read_through  # noqa: E402
from sample.generate import make_dataset, write_config  # noqa: E402

MARKER = ".bench-tars-layout"


def timed(cmd: list[str] | str, **kw) -> dict:
    """Run a command; its wall seconds and the CPU seconds of it and its children."""
    before = os.times()
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL, **kw)
    wall = time.perf_counter() - start
    after = os.times()
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}


def cold_start(python: str, tars: list[Path], can_drop: bool) -> None:
    """Drop the page cache (code stays warm), or read the tars once when that is refused."""
    if can_drop and drop_caches():
        subprocess.run([python, "-c", CODE_WARMUP], check=True, cwd=REPO)
    else:
        read_through(tars)


def fresh_root(work: Path, tars: list[Path]) -> Path:
    """A new root holding hard links to the tars, with `layout = "tars"`."""
    root = work / "root"
    shutil.rmtree(root, ignore_errors=True)
    (root / "hub" / "data").mkdir(parents=True)
    for t in tars:
        os.link(t, root / "hub" / "data" / t.name)
    write_config(root, layout="tars", dataloader={"minimum_image_size": 0})
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1600)
    ap.add_argument("--shards", type=int, default=16)
    ap.add_argument("--large", action="store_true", help="1024x1024/1792x1024 noisy images")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each step (median)")
    ap.add_argument("--workdir", type=Path, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--gen-jobs", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out", type=Path, help="write the result JSON here")
    args = ap.parse_args()
    python = sys.executable
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-tars-"))
    if work.exists() and any(work.iterdir()) and not (work / MARKER).exists():
        sys.exit(f"{work} is not empty and not a bench workdir: refusing to use it")
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("scratch folder of bench/tars_layout.py\n")
    ds = work / "ds"
    tars = sorted((ds / "hub" / "data").glob("*.tar"))
    if len(tars) != args.shards:
        shutil.rmtree(ds, ignore_errors=True)
        tars = make_dataset(
            ds,
            shards=args.shards,
            samples_per_shard=args.samples // args.shards,
            large=args.large,
            quirks=False,
            jobs=args.gen_jobs,
        )
    size = sum(t.stat().st_size for t in tars)
    can_drop = os.geteuid() == 0
    runs: dict[str, list[dict]] = {"cat": [], "build": [], "switch": []}
    try:
        for i in range(args.repeat):
            cold_start(python, tars, can_drop)
            runs["cat"].append(timed(f"cat {' '.join(map(str, tars))} > /dev/null", shell=True))
            root = fresh_root(work, tars)
            cold_start(python, tars, can_drop)
            runs["build"].append(timed([python, "-m", "doit", f"config={root / 'dataset.toml'}"]))
            switch = [python, "-m", "doit", f"config={root / 'dataset.toml'}"]
            runs["switch"].append(timed([*switch, "caption_field=long_caption"]))
            for name in runs:
                print(f"run {i + 1}: {name:7s} {runs[name][-1]}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work / "root", ignore_errors=True)
            if args.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    ratios = {"build/cat": med["build"] / med["cat"], "switch/cat": med["switch"] / med["cat"]}
    result = {
        "command": " ".join(sys.argv),
        "tars": len(tars),
        "tar_mb": round(size / 1e6, 1),
        "cache": "dropped before cat and build" if can_drop else "warm",
        "load_average": os.getloadavg(),
        "runs": runs,
        "median_wall_s": med,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets": {"build/cat": 1.1, "switch/cat": 0.02},
    }
    for k, v in ratios.items():
        verdict = "PASS" if v <= result["targets"][k] else "FAIL"
        print(f"{k:11s} {v:6.3f}x (target {result['targets'][k]}x) {verdict}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
