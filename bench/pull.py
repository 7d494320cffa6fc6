"""Bench `doit pull` against the Hub stand-in (tests/hub_server.py) on 127.0.0.1.

One run: the build alone (`doit` on local tars), then the stand-in throttled so that the
download alone takes about as long (rate = tar bytes / build seconds, unless --rate),
`doit download` alone, `doit pull` into an empty root (keep_tars, the default: the time
target), and again with `keep_tars = false` (peak tar bytes, the repair); then
5 images of the pulled folder are removed and `doit repair` fetches them from the Hub.
Prints the issue-17 targets with PASS/FAIL and writes a JSON result.

    .venv/bin/python bench/pull.py --samples 24000 --shards 12 --tmpfs \
        --out bench/results-pull-24k.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from hub_server import running_hub  # noqa: E402

from bench.tmpfs import MountError, tmpfs_mounted  # noqa: E402
from sample.generate import make_dataset, write_config  # noqa: E402

HUB_REPO = "bench/pulled"


def doit(root: Path, env: dict, *args: str) -> float:
    """Seconds one `doit` command takes; its output goes to `<root>.<args>.log`."""
    log = root.parent / f"{root.name}.{'-'.join(args) or 'build'}.log"
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "doit", f"config={root / 'dataset.toml'}", *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"doit {' '.join(args)} failed in {root}: see {log}")
    return seconds


def tree_hash(root: Path) -> str:
    """One sha256 over every file under data/ (paths and bytes)."""
    h = hashlib.sha256()
    for p in sorted((root / "data").rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def tar_bytes(root: Path) -> int:
    total = 0
    for p in [*(root / "hub").rglob("*.tar"), *(root / "hub").rglob("*.part")]:
        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
            total += p.stat().st_size
    return total


def repair_five(root: Path, server, env: dict) -> dict:
    """Remove 5 images of a pulled folder; bytes the repair fetched against the target."""
    conn = sqlite3.connect(root / "state" / "manifest.sqlite")
    images = conn.execute("SELECT path, size FROM files WHERE kind = 'image' LIMIT 5").fetchall()
    conn.close()
    for path, _ in images:
        (root / path).unlink()
    server.reset_counts()
    seconds = doit(root, env, "repair")
    fetched = sum(server.bytes_served.values())
    limit = sum(1.1 * size + 64 * 1024 for _, size in images)
    return {
        "images": len(images),
        "image_bytes": sum(s for _, s in images),
        "fetched": fetched,
        "limit": limit,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=3000)
    p.add_argument("--shards", type=int, default=6)
    p.add_argument("--large", action="store_true")
    p.add_argument("--rate", type=float, help="bytes/s of the stand-in (default: as the build)")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--keep", action="store_true", help="keep the work folder and its logs")
    p.add_argument("--workers", type=int, help="the pull's `workers` setting (default: cores)")
    p.add_argument(
        "--tmpfs",
        action="store_true",
        help="mount a tmpfs on the work folder (root): ext4 slows creates after a mass delete",
    )
    a = p.parse_args(argv)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="shardprep-pull-bench-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    if a.tmpfs:
        try:
            with tmpfs_mounted(work, "4G", keep=a.keep) as notes:
                code = _run_in(a, work)
            for note in notes:
                print(note)
            return code
        except MountError as exc:
            raise SystemExit(str(exc)) from None
    return _run_in(a, work)


def _run_in(a: argparse.Namespace, work: Path) -> int:
    """The bench in `work`, removed afterwards unless --keep."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HOME": str(work / "hf_home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    env.pop("HF_TOKEN", None)
    try:
        return run(a, work, env)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


def run(a: argparse.Namespace, work: Path, env: dict) -> int:
    local = work / "local"
    tars = make_dataset(
        local, shards=a.shards, samples_per_shard=a.samples // a.shards, large=a.large, quirks=False
    )
    files = {f"data/{t.name}": t.read_bytes() for t in tars}
    total = sum(len(b) for b in files.values())
    write_config(local, repo_id=HUB_REPO)
    build = doit(local, env)
    rate = a.rate or total / build
    r: dict = {
        "samples": a.samples,
        "shards": a.shards,
        "tar_bytes": total,
        "build_alone_s": build,
        "rate_bytes_per_s": rate,
        "pull_workers": a.workers,
    }
    with running_hub(files, repo_id=HUB_REPO) as server:
        server.rate = rate
        env["HF_ENDPOINT"] = server.url
        down = work / "download"
        write_config(down, repo_id=HUB_REPO)
        r["download_alone_s"] = doit(down, env, "download")
        extra = {"workers": a.workers} if a.workers else {}
        kept = work / "pulled-keep-tars"
        write_config(kept, repo_id=HUB_REPO, **extra)
        r["pull_keep_tars_s"] = doit(kept, env, "pull")
        r["same_data_keep_tars"] = tree_hash(kept) == tree_hash(local)
        shutil.rmtree(kept)
        pulled = work / "pulled"
        write_config(pulled, repo_id=HUB_REPO, keep_tars=False, **extra)
        peak = [0]
        server.watch = lambda path: peak.__setitem__(0, max(peak[0], tar_bytes(pulled)))
        r["pull_s"] = doit(pulled, env, "pull")
        server.watch = None
        r["peak_tar_bytes"] = peak[0]
        r["two_largest_shards"] = sum(sorted(len(b) for b in files.values())[-2:])
        r["same_data_as_local_build"] = tree_hash(pulled) == tree_hash(local)
        server.rate = None
        r["repair"] = repair_five(pulled, server, env)
    report(r)
    if a.out:
        a.out.write_text(json.dumps(r, indent=2) + "\n")
    return 0


def report(r: dict) -> None:
    slowest = max(r["download_alone_s"], r["build_alone_s"])
    ratio = r["pull_keep_tars_s"] / slowest
    rep = r["repair"]
    r["targets"] = targets = [
        ("pull (keep_tars) <= 1.15 x max(download, build)", f"{ratio:.2f}x", ratio <= 1.15),
        (
            "peak tar bytes <= 2 shards",
            f"{r['peak_tar_bytes']} <= {r['two_largest_shards']}",
            r["peak_tar_bytes"] <= r["two_largest_shards"],
        ),
        (
            "repair fetched <= 1.1 x size + 64 KiB each",
            f"{rep['fetched']} <= {rep['limit']:.0f}",
            rep["fetched"] <= rep["limit"],
        ),
        (
            "data/ equal to the local build (both pulls)",
            str(r["same_data_as_local_build"] and r["same_data_keep_tars"]),
            r["same_data_as_local_build"] and r["same_data_keep_tars"],
        ),
    ]
    print(
        f"{r['shards']} shards, {r['samples']} samples, {r['tar_bytes'] / 1e6:.1f} MB of tars; "
        f"stand-in throttled to {r['rate_bytes_per_s'] / 1e6:.2f} MB/s"
    )
    print(
        f"build alone {r['build_alone_s']:.1f} s, download alone {r['download_alone_s']:.1f} s, "
        f"sum {r['build_alone_s'] + r['download_alone_s']:.1f} s; "
        f"pull {r['pull_keep_tars_s']:.1f} s"
        f" (keep_tars = false: {r['pull_s']:.1f} s = {r['pull_s'] / slowest:.2f}x, bounded by the"
        " two-tar rule)"
    )
    for name, value, ok in targets:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {value}")


if __name__ == "__main__":
    raise SystemExit(main())
