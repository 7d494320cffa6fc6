"""Benchmark shardprep against GNU `tar xf` and the manual preset, in one run at one scale.

    python bench/run.py --samples 30000 --shards 10 [--large] [--quirks] [--jobs N]
                        [--flat] [--tmpfs] [--profile] [--out bench/results-<name>.json]
                        [--workdir DIR] [--keep]

Every timed step runs as a child process: wall time, CPU time (user+sys of the child and
every descendant it waited for, from `os.wait4`), peak memory, and disk blocks read and
written. See bench/README.md for what each step, figure and target means.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import marshal
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.profiles import format_summary, summarize  # noqa: E402
from bench.tmpfs import MountError, tmpfs_mounted  # noqa: E402
from sample.generate import make_dataset, plan_shard, write_config  # noqa: E402

MB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
MARKER = ".shardprep-bench"
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
LAUNCHER = REPO / "bench" / "launch.py"
FLOOR_CAPTIONS = REPO / "bench" / "floor_captions.py"
DEFAULT_WORKDIR = REPO / "bench" / "work" / "run"  # gitignored
# ext4 RECENTCY_MIN + RECENTCY_DIRTY: the steps create inodes in the same inode table
# blocks, which makes them dirty again, so the 360 s window applies, not the clean 60 s
RECENTLY_DELETED_S = 365
CODE_WARMUP = "import pyarrow.parquet, pyarrow, doit, xxhash, sqlite_utils, json, tarfile"


# ----------------------------------------------------------------------- measuring


class TreeSampler(threading.Thread):
    """Samples the summed RSS (/proc/<pid>/statm resident pages) of a process tree.

    The tree is found from the ppid of every process in /proc, every `interval` s.
    Summed RSS counts pages shared between processes (forked workers) once per process,
    so for `-P process` it is an upper bound.
    """

    def __init__(self, root_pid: int, interval: float = 0.05, skip_root: bool = False):
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.skip_root = skip_root
        self.interval = interval
        self.peak = 0
        self.peak_procs = 0
        self.peak_pss = 0
        self.pss = os.path.exists("/proc/self/smaps_rollup")
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def sample(self) -> None:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(b")") + 2 :].split(maxsplit=2)[1])
            children.setdefault(ppid, []).append(int(entry.name))
        total, pss, procs, todo = 0, 0, 0, [self.root_pid]
        while todo:
            pid = todo.pop()
            todo.extend(children.get(pid, ()))
            if pid == self.root_pid and self.skip_root:
                continue
            try:
                with open(f"/proc/{pid}/statm", "rb") as f:
                    total += int(f.read().split()[1]) * PAGE
                procs += 1
                if self.pss:
                    pss += _pss_kb(pid) * 1024
            except (OSError, IndexError, ValueError):
                pass
        self.samples += 1
        if total > self.peak:
            self.peak, self.peak_procs = total, procs
        self.peak_pss = max(self.peak_pss, pss)


def _pss_kb(pid: int) -> int:
    """Proportional set size of a process (shared pages split between their users)."""
    with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
        for line in f:
            if line.startswith(b"Pss:"):
                return int(line.split()[1])
    return 0


def busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / CLK_TCK  # minus idle and iowait


def own_cpu_s() -> float:
    """CPU seconds of this process and of every child it waited for."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def wait_after_mass_delete() -> None:
    """Let ext4 stop treating the inodes just freed as recently deleted (see set_aside)."""
    subprocess.run(["sync"], check=False)
    print(f"(waiting {RECENTLY_DELETED_S} s after clearing the workdir: see set_aside)", flush=True)
    time.sleep(RECENTLY_DELETED_S)


def drop_caches() -> bool:
    """sync, then drop the page cache, dentries and inodes; False if not permitted."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def read_through(paths: list[Path]) -> None:
    """Read files once (warm-up when the page cache cannot be dropped)."""
    buf = bytearray(1 << 20)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def end_session(proc: subprocess.Popen) -> None:
    """Kill a step's process group (the launcher and everything it started) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def caption_pairs(data_dir: Path, field: str = "short_caption") -> list[tuple[bytes, bytes]]:
    """(caption path, caption bytes) per JSON in `data_dir`, by extract-captions.py's rule:
    JSONs with a width, `<splitext(image_name)[0]>.txt`; non-string captions left out."""
    pairs = []
    for entry in os.scandir(data_dir):
        if not entry.name.endswith(".json"):
            continue
        with open(entry.path, encoding="utf-8") as f:
            obj = json.load(f)
        text = obj.get(field) if isinstance(obj, dict) and "width" in obj else None
        if isinstance(text, str) and isinstance(obj.get("image_name"), str):
            path = os.path.join(data_dir, os.path.splitext(obj["image_name"])[0] + ".txt")
            pairs.append((os.fsencode(path), text.encode("utf-8")))
    return pairs


def measure(name: str, cmd: list[str], log: Path, cwd: Path = REPO, **extra) -> dict:
    """Run `cmd` once through bench/launch.py: wall, CPU and max RSS from its `wait4`,
    plus the summed RSS of the command's process tree sampled every 50 ms."""
    log.parent.mkdir(parents=True, exist_ok=True)
    usage_file = log.with_suffix(".usage.json")
    busy0, own0, load0 = busy_cpu_s(), own_cpu_s(), os.getloadavg()[0]
    sampler = run_launched(cmd, log, cwd, usage_file)
    other_cpu = (busy_cpu_s() - busy0) - (own_cpu_s() - own0)
    usage = json.loads(usage_file.read_text())
    t = time.perf_counter()
    os.sync()  # untimed: the next step must not pay for this one's writeback
    sync_s = time.perf_counter() - t
    result = {
        "step": name,
        "cmd": [str(c) for c in cmd],
        "rc": usage["rc"],
        "wall_s": usage["wall_s"],
        "cpu_s": usage["user_s"] + usage["sys_s"],
        "user_s": usage["user_s"],
        "sys_s": usage["sys_s"],
        "tree_rss_peak_mb": sampler.peak / MB,
        "tree_procs_at_peak": sampler.peak_procs,
        "tree_pss_peak_mb": sampler.peak_pss / MB,  # shared pages split: fair for -P
        "max_proc_rss_mb": usage["maxrss_kb"] / 1024,  # biggest single process
        "launcher_rss_mb": usage["launcher_rss_kb"] / 1024,
        "disk_read_mb": usage["inblock"] * 512 / MB,
        "disk_write_mb": usage["oublock"] * 512 / MB,
        "sync_after_s": sync_s,
        "other_cpu_s": max(0.0, other_cpu),  # other processes on the machine meanwhile
        "loadavg_before": load0,
        "log": str(log),
        **extra,
    }
    result["peak_mb"] = max(result["tree_rss_peak_mb"], result["max_proc_rss_mb"])
    lines = [ln for ln in log.read_text(errors="replace").strip().splitlines() if ln.strip()]
    if lines and lines[-1].startswith("{"):
        with contextlib.suppress(json.JSONDecodeError):
            result["phases"] = json.loads(lines[-1])
    print_step(result, lines)
    return result


def run_launched(cmd: list[str], log: Path, cwd: Path, usage_file: Path) -> TreeSampler:
    """Run `cmd` under bench/launch.py (usage into `usage_file`, output into `log`) while
    sampling its process tree; the sampler, stopped, holds the peaks."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    launcher = [sys.executable, "-I", "-S", str(LAUNCHER), str(usage_file), "--"]
    with open(log, "wb") as out:
        # own session: on Ctrl-C or an error the whole step's tree is ended here, so
        # nothing keeps files open on a tmpfs that must be unmounted
        proc = subprocess.Popen(
            launcher + cmd,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        sampler = TreeSampler(proc.pid, skip_root=True)
        sampler.start()
        try:
            proc.wait()
        except BaseException:
            end_session(proc)
            raise
        finally:
            sampler.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"bench/launch.py failed for {cmd}: see {log}")
    return sampler


def print_step(result: dict, lines: list[str]) -> None:
    """One line for a measured step; the end of its output when it failed."""
    wall, rc = result["wall_s"], result["rc"]
    status_txt = "ok" if rc == 0 else f"EXIT {rc}"
    print(
        f"  {result['step']:<28} {wall:9.2f} s wall {result['cpu_s']:9.2f} s cpu "
        f"{result['peak_mb']:7.1f} MB  [{status_txt}]",
        flush=True,
    )
    if rc != 0:
        print("    " + "\n    ".join(lines[-15:]), flush=True)


# ----------------------------------------------------------------------- the run


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.workdir).resolve()
        self.logs = self.work / "logs"
        self.per_shard = args.samples // args.shards
        self.steps: list[dict] = []
        self.checks: list[dict] = []
        self.notes: list[str] = []
        self.can_drop = False
        self.tmpfs = args.tmpfs
        self.profiles: dict[str, dict] = {}
        self.new_tar: Path | None = None
        self.python = sys.executable
        # The generator's small images (8-64 px) are all under SimpleTuner's default
        # minimum_image_size (0.75 MP): the audit would note every one of them, which the
        # real dataset (1024 px and up) never causes. "auto" turns the rule off for them.
        size = args.min_image_size
        if size == "auto":
            self.min_image_size = None if args.large else 0
        else:
            self.min_image_size = None if size == "keep" else float(size)

    # -- helpers

    def doit_cmd(self, root: Path, *extra: str, jobs: int = 1) -> list[str]:
        cmd = [self.python, "-m", "doit"]
        if jobs > 1:
            cmd += ["-n", str(jobs), "-P", "process"]
        return cmd + [f"config={root / 'dataset.toml'}", *extra]

    def prepare_cold(self, tars: list[Path]) -> str:
        """Make the next step start from a cold page cache (or an equally warm one)."""
        if self.tmpfs:
            return "tmpfs (every file in memory)"
        if self.can_drop:
            drop_caches()
            # Code warm, data cold: a build is judged on its data, not on loading pyarrow.
            subprocess.run([self.python, "-c", CODE_WARMUP], check=True, cwd=REPO)
            return "data cold (caches dropped), code warm"
        read_through(tars)
        return "warm (shards read once before the step)"

    def step(self, name: str, cmd: list[str], **extra) -> dict:
        r = measure(name, cmd, self.logs / f"{len(self.steps):02d}-{name}.log", **extra)
        self.steps.append(r)
        return r

    def repeated(self, name: str, cmd: list[str], times: int, **extra) -> dict:
        """An idempotent step run `times` times: the median run, all walls kept."""
        runs = [
            measure(f"{name}#{i + 1}", cmd, self.logs / f"{len(self.steps):02d}-{name}-{i}.log")
            for i in range(times)
        ]
        return self.keep_median(name, runs, **extra)

    def keep_median(self, name: str, runs: list[dict], **extra) -> dict:
        """Record the run with the median wall time (peak: the max of all runs)."""
        ordered = sorted(runs, key=lambda r: r["wall_s"])
        median = dict(ordered[(len(ordered) - 1) // 2])
        median.update(step=name, **extra)
        if len(runs) > 1:
            median["runs_wall_s"] = [r["wall_s"] for r in runs]
            median["peak_mb"] = max(r["peak_mb"] for r in runs)
        self.steps.append(median)
        return median

    def check(self, name: str, ok: bool, detail: str = "") -> None:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        if not ok:
            print(f"  CHECK FAILED: {name}: {detail}", flush=True)

    def set_aside(self, path: Path) -> None:
        """Move a finished step's folder out of the way; it is deleted when the run ends.

        Deleting it now would slow the next step down: ext4 without a journal (this
        machine's root) will not reuse an inode freed less than 60 s ago (360 s while its
        inode table block is dirty) and checks every such slot on each create
        (`recently_deleted` in fs/ext4/ialloc.c; most of the kernel time in `perf`).
        Creating 60k files took 5 s to 37 s here, depending on how recently 60k others
        had been deleted. On tmpfs the folder is deleted at once (it holds memory).
        """
        if self.tmpfs:
            shutil.rmtree(path)
            return
        trash = self.work / "trash"
        trash.mkdir(exist_ok=True)
        path.rename(trash / f"{len(list(trash.iterdir()))}-{path.name}")

    def config_settings(self) -> dict:
        """dataset.toml settings besides root (the same for every root of the run)."""
        if self.min_image_size is None:
            return {}
        return {"dataloader": {"minimum_image_size": self.min_image_size}}

    def link_root(self, name: str, tars: list[Path]) -> Path:
        """A fresh dataset root whose hub/data holds hard links to `tars`."""
        root = self.work / name
        shutil.rmtree(root, ignore_errors=True)
        (root / "hub" / "data").mkdir(parents=True)
        for t in tars:
            os.link(t, root / "hub" / "data" / t.name)
        write_config(root, **self.config_settings())
        return root

    # -- phases

    def clear_workdir(self) -> None:
        """Empty a previous run's workdir; refuse a folder this script did not make."""
        if self.tmpfs and os.path.ismount(self.work):
            raise MountError(f"{self.work} is already a mount point: `umount {self.work}` first")
        if self.work.exists() and any(self.work.iterdir()):
            if not (self.work / MARKER).exists():
                sys.exit(f"{self.work} is not empty and not a bench workdir: refusing to clear it")
            shutil.rmtree(self.work)
            if not self.tmpfs:  # the tmpfs's creates do not meet ext4's freed inodes
                wait_after_mass_delete()
        self.work.mkdir(parents=True, exist_ok=True)

    def setup(self) -> None:
        (self.work / MARKER).write_text("scratch folder of bench/run.py\n")
        if self.tmpfs:
            self.notes.append(
                f"work folder on a tmpfs (size={self.args.tmpfs_size}): shards and outputs in "
                "memory, no page cache dropped, finished copies deleted at once"
            )
            return
        self.can_drop = drop_caches()
        if not self.can_drop:
            self.notes.append("page cache cannot be dropped here: all steps are warm-cache runs")

    def generate(self) -> list[Path]:
        a = self.args
        root = self.work / "ds"
        t = time.perf_counter()
        tars = make_dataset(
            root,
            shards=a.shards,
            samples_per_shard=self.per_shard,
            seed=a.seed,
            large=a.large,
            quirks=a.quirks,
            jobs=a.gen_jobs,
        )
        write_config(root, **self.config_settings())
        self.gen_s = time.perf_counter() - t
        self.root = root
        self.tars = tars
        self.tar_bytes = sum(p.stat().st_size for p in tars)
        print(
            f"generated {len(tars)} shards x {self.per_shard} samples, "
            f"{self.tar_bytes / MB:.1f} MB in {self.gen_s:.1f} s (not counted)",
            flush=True,
        )
        return tars

    def tar_floor(self) -> None:
        """GNU `tar xf` of every shard; then (the floor's second part) one bare
        open/write/close per caption into the same folder, timed as its own step."""
        script = 'd=$1; shift; for f in "$@"; do tar xf "$f" -C "$d" || exit 1; done'
        with_captions = "floor" not in self.args.skip
        runs, caption_runs = [], []
        for i in range(self.args.cold_repeat):
            dest = self.work / "tarfloor" / "data"
            dest.mkdir(parents=True)
            cache = self.prepare_cold(self.tars)
            runs.append(
                measure(
                    f"tar_xf#{i + 1}",
                    ["bash", "-c", script, "tarxf", str(dest), *map(str, self.tars)],
                    self.logs / f"{len(self.steps):02d}-tar_xf-{i}.log",
                )
            )
            if with_captions:
                caption_runs.append(self.floor_captions(dest, i))
            self.set_aside(dest.parent)
        self.keep_median("tar_xf", runs, input_bytes=self.tar_bytes, cache=cache)
        if caption_runs:
            self.keep_median("floor_captions", caption_runs, cache="warm (right after tar xf)")

    def floor_captions(self, dest: Path, i: int) -> dict:
        """The captions of `dest`'s JSONs, written by bench/floor_captions.py (JSONs parsed
        here first, untimed: the floor writes caption files, it does not read JSON)."""
        pairs = caption_pairs(dest)
        pairs_file = self.logs / f"floor-captions-{i}.marshal"
        pairs_file.parent.mkdir(parents=True, exist_ok=True)
        pairs_file.write_bytes(marshal.dumps(pairs))
        r = measure(
            f"floor_captions#{i + 1}",
            [self.python, "-I", "-S", str(FLOOR_CAPTIONS), str(pairs_file)],
            self.logs / f"{len(self.steps):02d}-floor_captions-{i}.log",
            input_bytes=sum(len(t) for _, t in pairs),
            files=len(pairs),
        )
        pairs_file.unlink()
        return r

    def cp_tars(self) -> None:
        """A plain `cp` of the tars into a fresh folder: the same bytes written once."""
        runs = []
        for i in range(self.args.cold_repeat):
            dest = self.work / "cpfloor"
            dest.mkdir()
            cache = self.prepare_cold(self.tars)
            runs.append(
                measure(
                    f"cp_tars#{i + 1}",
                    ["cp", "--", *map(str, self.tars), str(dest)],
                    self.logs / f"{len(self.steps):02d}-cp_tars-{i}.log",
                )
            )
            self.set_aside(dest)
        self.keep_median("cp_tars", runs, input_bytes=self.tar_bytes, cache=cache)

    def preset(self) -> None:
        self.preset_dir = self.work / "preset"
        runs = []
        for i in range(self.args.cold_repeat):
            if i:
                self.set_aside(self.preset_dir)
            self.preset_dir.mkdir()
            cache = self.prepare_cold(self.tars)
            cmd = [
                self.python,
                str(REPO / "bench" / "preset_steps.py"),
                "pipeline",
                str(self.preset_dir / "data"),
                str(self.preset_dir / "dalle3.parquet"),
                *map(str, self.tars),
            ]
            runs.append(
                measure(f"preset#{i + 1}", cmd, self.logs / f"{len(self.steps):02d}-preset-{i}.log")
            )
        self.keep_median("preset", runs, input_bytes=self.tar_bytes, cache=cache)

    def preset_captions(self) -> None:
        """extract-captions.py alone, switching to long_caption (re-parses every JSON)."""
        data = self.preset_dir / "data"
        jsons = [Path(e.path) for e in os.scandir(data) if e.name.endswith(".json")]
        json_bytes = sum(p.stat().st_size for p in jsons)
        # the cold steps dropped the page cache since the preset ran: warm the JSONs and
        # caption files it reads and rewrites, as shardprep's switch runs warm
        captions = [p.with_suffix(".txt") for p in jsons]
        read_through(jsons + [p for p in captions if p.exists()])
        self.step(
            "preset_extract_captions",
            [
                self.python,
                str(REPO / "bench" / "preset_steps.py"),
                "captions",
                str(data),
                "long_caption",
            ],
            input_bytes=json_bytes,
            cache="warm",
        )

    def expected_rows(self, shards: int) -> int:
        if not self.args.quirks:
            return shards * self.per_shard
        plan = [s for n in range(shards) for s in plan_shard(n, self.per_shard, self.args.seed)]
        return sum(1 for s in plan if s.complete)

    def shardprep(self) -> None:
        import pyarrow.parquet as pq

        root, a = self.root, self.args
        runs = []
        for i in range(1, a.cold_repeat):  # extra cold builds in throwaway roots
            extra_root = self.link_root(f"ds-cold{i}", self.tars)
            self.prepare_cold(self.tars)
            log = self.logs / f"{len(self.steps):02d}-cold-{i}.log"
            runs.append(measure(f"cold#{i}", self.doit_cmd(extra_root), log))
            self.set_aside(extra_root)
        cache = self.prepare_cold(self.tars)
        log = self.logs / f"{len(self.steps):02d}-cold.log"
        runs.append(measure(f"cold#{a.cold_repeat}", self.doit_cmd(root), log))
        self.keep_median("cold", runs, input_bytes=self.tar_bytes, cache=cache, shards=a.shards)
        self.check("cold builds exit 0", all(r["rc"] == 0 for r in runs))
        rows = pq.read_metadata(root / "dalle3.parquet").num_rows
        want = self.expected_rows(a.shards)
        self.check("cold: table rows", rows == want, f"{rows} rows, expected {want}")
        if "preset" not in a.skip:
            self.compare_with_preset("short_caption")
        self.cold_table = self.work / "cold-table.parquet"
        shutil.copyfile(root / "dalle3.parquet", self.cold_table)

        self.repeated("noop", self.doit_cmd(root), a.repeat, input_bytes=0, cache="warm")

        new = make_dataset(
            root,
            shards=1,
            samples_per_shard=self.per_shard,
            seed=a.seed,
            large=a.large,
            quirks=a.quirks,
            start=a.shards,
        )[0]
        self.new_tar = new
        r = self.step(
            "new_shard", self.doit_cmd(root), input_bytes=new.stat().st_size, cache="warm"
        )
        rows = pq.read_metadata(root / "dalle3.parquet").num_rows
        want = self.expected_rows(a.shards + 1)
        self.check("new shard: table rows", r["rc"] == 0 and rows == want, f"{rows}, want {want}")

        self.edit_json()
        if "switch" not in a.skip:
            self.caption_switch()
        if "audit" not in a.skip:
            self.audit()

    def edit_json(self) -> None:
        import pyarrow.parquet as pq

        root = self.root
        spec = plan_shard(0, self.per_shard, self.args.seed, self.args.large, self.args.quirks)[
            self.per_shard // 2
        ]
        path = root / "data" / (spec.key + ".json")
        obj = json.loads(path.read_text(encoding="utf-8"))
        obj["short_caption"] = "EDITED by bench: " + obj["short_caption"]
        path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
        r = self.step(
            "edit_json", self.doit_cmd(root), input_bytes=path.stat().st_size, cache="warm"
        )
        txt = (root / "data" / (spec.key + ".txt")).read_text(encoding="utf-8")
        self.check(
            "edited JSON: caption file updated",
            r["rc"] == 0 and txt == obj["short_caption"],
            repr(txt[:60]),
        )
        table = pq.read_table(root / "dalle3.parquet", columns=["filename", "caption"])
        caps = dict(
            zip(*(table.column(c).to_pylist() for c in ("filename", "caption")), strict=True)
        )
        self.check(
            "edited JSON: table row updated",
            caps.get(spec.image_name) == obj["short_caption"],
            repr(caps.get(spec.image_name, "<no row>"))[:60],
        )
        self.edited = (spec, obj)

    def caption_switch(self) -> None:
        root = self.root
        parts = root / "state" / "parts"
        part_bytes = sum(p.stat().st_size for p in parts.rglob("*.parquet"))
        r = self.step(
            "caption_switch",
            self.doit_cmd(root, "caption_field=long_caption"),
            input_bytes=part_bytes,
            cache="warm",
        )
        self.check("caption switch exits 0", r["rc"] == 0)
        self.sample_captions("after switch to long_caption", "long_caption")
        r = self.step("caption_switch_back", self.doit_cmd(root), input_bytes=part_bytes)
        self.check("caption switch back exits 0", r["rc"] == 0)
        self.sample_captions("after switch back to short_caption", "short_caption")

    def has_audit(self) -> bool:
        """Whether `doit list` shows an `audit` task."""
        listing = subprocess.run(
            self.doit_cmd(self.root, "list"),
            cwd=REPO,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        ).stdout
        return any(line.split()[:1] == ["audit"] for line in listing.splitlines())

    def audit(self) -> None:
        if not self.has_audit():
            self.notes.append("`doit list` shows no `audit` task: audit not measured")
            print("  audit: no such task yet, skipped", flush=True)
            return
        r = self.repeated(
            "audit", self.doit_cmd(self.root, "audit", *self.args.audit_args), self.args.repeat
        )
        self.check("audit exits 0 on a clean build", r["rc"] == 0, f"rc={r['rc']}")
        if self.args.deep:
            self.deep_audit()

    def deep_audit(self) -> None:
        """`doit audit --deep` against `cat` of every file it re-reads, both cache-cold."""
        root = self.root
        files: list[str] = []  # what the manifest lists: not the tars, not the databases
        for folder, dirs, names in os.walk(root):
            rel = os.path.relpath(folder, root)
            if rel == ".":
                dirs[:] = [d for d in dirs if d != "hub"]
            elif rel == "state":
                dirs[:] = [d for d in dirs if d == "parts"]
                continue
            files += [os.path.join(folder, name) for name in names]
        size = sum(os.path.getsize(f) for f in files)
        listing = self.work / "deep-files.txt"
        listing.write_bytes(b"\0".join(os.fsencode(f) for f in files))
        cache = self.prepare_cold(self.tars)
        self.step(
            "cat_all_files",
            ["bash", "-c", 'xargs -0 -a "$1" cat > /dev/null', "cat", str(listing)],
            input_bytes=size,
            cache=cache,
            files=len(files),
        )
        cache = self.prepare_cold(self.tars)
        r = self.step(
            "audit_deep", self.doit_cmd(root, "audit", "--deep"), input_bytes=size, cache=cache
        )
        self.check("deep audit exits 0 on a clean build", r["rc"] == 0, f"rc={r['rc']}")

    def parallel(self) -> None:
        jobs = self.args.jobs
        root = self.link_root("ds-par", self.tars)
        cache = self.prepare_cold(self.tars)
        r = self.step(
            f"cold_P{jobs}",
            self.doit_cmd(root, jobs=jobs),
            input_bytes=self.tar_bytes,
            cache=cache,
            shards=self.args.shards,
        )
        self.check(f"cold -n {jobs} -P process exits 0", r["rc"] == 0)
        self.same_table(root, f"-n {jobs} table equals the serial cold build's")
        self.repeated(f"noop_P{jobs}", self.doit_cmd(root, jobs=jobs), 1, input_bytes=0)
        self.set_aside(root)

    def serial_cold(self) -> None:
        """Cold build with `workers=1` (every shard read in the build's own process)."""
        root = self.link_root("ds-serial", self.tars)
        cache = self.prepare_cold(self.tars)
        r = self.step(
            "cold_serial",
            self.doit_cmd(root, "workers=1"),
            input_bytes=self.tar_bytes,
            cache=cache,
            shards=self.args.shards,
        )
        self.check("cold workers=1 exits 0", r["rc"] == 0)
        self.same_table(root, "workers=1 table equals the default cold build's")
        self.set_aside(root)

    def flat(self) -> None:
        """Cold build with half the shards (same shard size): memory must not grow."""
        half = max(1, self.args.shards // 2)
        root = self.link_root("ds-flat", self.tars[:half])
        cache = self.prepare_cold(self.tars[:half])
        r = self.step(
            "cold_half_shards",
            self.doit_cmd(root),
            input_bytes=sum(p.stat().st_size for p in self.tars[:half]),
            cache=cache,
            shards=half,
        )
        self.check("cold (half the shards) exits 0", r["rc"] == 0)
        self.set_aside(root)

    def profile(self) -> None:
        """Our steps once more under cProfile, untimed, in a root of their own (serial
        `doit`: every task runs in its one process, so the profile covers the build)."""
        root = self.link_root("ds-prof", self.tars)
        steps: list[tuple[str, list[str]]] = [("cold", []), ("noop", [])]
        if "audit" not in self.args.skip and self.has_audit():
            steps.append(("audit", ["audit", *self.args.audit_args]))
        if self.new_tar is not None:
            steps.append(("new_shard", []))
        if "switch" not in self.args.skip:
            steps.append(("caption_switch", ["caption_field=long_caption"]))
        print("profiled runs (cProfile, not timed):", flush=True)
        for name, extra in steps:
            if name == "new_shard":
                os.link(self.new_tar, root / "hub" / "data" / self.new_tar.name)
            self.prepare_cold(self.tars)
            prof = self.logs / f"profile-{name}.prof"
            cmd = [self.python, "-m", "cProfile", "-o", str(prof), "-m", "doit"]
            cmd += [f"config={root / 'dataset.toml'}", *extra]
            r = measure(f"profile:{name}", cmd, self.logs / f"profile-{name}.log")
            summary = {"wall_s": r["wall_s"], "rc": r["rc"], "cmd": r["cmd"]}
            if prof.exists():
                summary.update(summarize(prof, REPO))
                summary["prof_file"] = str(prof)
            self.profiles[name] = summary
        self.set_aside(root)

    # -- correctness cross-checks (untimed)

    def compare_with_preset(self, field: str) -> None:
        """Every row compile.py makes is ours exactly; ours has more only for JSONs without
        width/height (the preset drops them, shardprep takes the image header's size)."""
        import pyarrow.parquet as pq

        cols = ["width", "height", "caption", "filename"]
        ours = pq.read_table(self.root / "dalle3.parquet", columns=cols)
        theirs = pq.read_table(self.preset_dir / "dalle3.parquet", columns=cols)
        mine = set(zip(*(ours.column(c).to_pylist() for c in cols), strict=True))
        data = self.preset_dir / "data"
        preset = {
            row
            for row in zip(*(theirs.column(c).to_pylist() for c in cols), strict=True)
            # the preset keeps rows whose image is missing; shardprep keeps those aside
            if not self.args.quirks or (data / row[3]).exists()
        }
        missing, extra = preset - mine, mine - preset
        no_size = 0
        if self.args.quirks:
            no_size = sum(
                1
                for n in range(self.args.shards)
                for spec in plan_shard(n, self.per_shard, self.args.seed)
                if spec.quirk == "no_size" and spec.complete
            )
        self.check(
            "table: every compile.py row is ours, extras are JSONs without width",
            not missing and len(extra) == no_size,
            f"{len(mine)} rows; {len(missing)} preset rows missing (e.g. {sorted(missing)[:2]}),"
            f" {len(extra)} extra (expected {no_size})",
        )
        self.sample_captions("caption files equal the preset's", field, self.preset_dir / "data")

    def same_table(self, other: Path, label: str) -> None:
        import pyarrow.parquet as pq

        mine = pq.read_table(self.cold_table).sort_by("filename")
        theirs = pq.read_table(other / "dalle3.parquet").sort_by("filename")
        self.check(label, mine.equals(theirs), f"{theirs.num_rows} rows")

    def sample_captions(self, label: str, field: str, reference: Path | None = None) -> None:
        """Up to 500 sampled caption files: equal to the JSON field (or the preset's file)."""
        data = self.root / "data"
        specs = [
            s
            for n in range(self.args.shards)
            for s in plan_shard(
                n, self.per_shard, self.args.seed, self.args.large, self.args.quirks
            )
            if s.has_size and s.complete and s.quirk not in ("dot_slash",)
        ]
        step = max(1, len(specs) // 500)
        bad = []
        for spec in specs[::step]:
            mine = (data / (spec.key + ".txt")).read_bytes()
            if reference is not None:
                want = (reference / (spec.key + ".txt")).read_bytes()
            else:
                obj = json.loads((data / (spec.key + ".json")).read_text(encoding="utf-8"))
                want = obj[field].encode("utf-8")
            if mine != want:
                bad.append(spec.key)
        self.check(
            f"{label} ({len(specs[::step])} sampled)", not bad, f"differ: {bad[:5]}" if bad else ""
        )

    # -- the whole run

    def run(self) -> dict:
        """The whole run; on a tmpfs mounted for it with --tmpfs."""
        a = self.args
        self.code = code_fingerprint()
        self.started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.loadavg_at_start = os.getloadavg()
        self.clear_workdir()
        if not a.tmpfs:
            result = self.run_steps()
            if not a.keep:
                shutil.rmtree(self.work, ignore_errors=True)
            return result
        with tmpfs_mounted(self.work, a.tmpfs_size, keep=a.keep) as mount_notes:
            result = self.run_steps()
        result["notes"] += mount_notes
        for n in mount_notes:
            print(f"note: {n}")
        return result

    def run_steps(self) -> dict:
        """Every step in order, then the report."""
        a = self.args
        self.setup()
        self.generate()
        cache = "tmpfs" if self.tmpfs else "cache dropped before cold steps"
        print(f"timed steps ({cache if self.tmpfs or self.can_drop else 'warm'}):", flush=True)
        if "tar" not in a.skip:
            self.tar_floor()
        if "cp" not in a.skip:
            self.cp_tars()
        if "preset" not in a.skip:
            self.preset()
        self.shardprep()
        if "preset" not in a.skip:
            self.preset_captions()
            self.set_aside(self.preset_dir)
        if a.jobs > 1:
            self.parallel()
        if a.serial:
            self.serial_cold()
        if a.flat:
            self.flat()
        if a.profile:
            self.profile()
        return self.report()

    # -- report

    def by_name(self) -> dict[str, dict]:
        return {s["step"]: s for s in self.steps}

    def report(self) -> dict:
        a = self.args
        s = self.by_name()
        w = {k: v["wall_s"] for k, v in s.items()}
        if "tar_xf" in w and "floor_captions" in w:
            w["floor"] = w["tar_xf"] + w["floor_captions"]
        ratios = wall_ratios(w, f"cold_P{a.jobs}")
        serial = ["cold", "noop", "new_shard", "edit_json", "caption_switch"]
        serial += ["caption_switch_back", "audit"]
        peak = max(s[k]["peak_mb"] for k in serial if k in s)
        ours = [k for k in s if k in serial or k.startswith(("cold", "noop"))]
        peak_proc = max(s[k]["max_proc_rss_mb"] for k in ours)
        targets = issue18_targets(ratios, peak_proc, a) + earlier_targets(s, ratios, peak, a)
        result = {
            "args": {k: v for k, v in vars(a).items()},
            "machine": machine_facts(),
            "dataset": {
                "shards": a.shards,
                "samples_per_shard": self.per_shard,
                "samples": a.shards * self.per_shard,
                "tar_bytes": self.tar_bytes,
                "large": a.large,
                "quirks": a.quirks,
                "generation_s": self.gen_s,
                "dataset_toml": self.config_settings(),
            },
            "code": self.code,
            "started": self.started,
            "cache": "dropped before cold steps" if self.can_drop else "warm",
            "steps": self.steps,
            "ratios": ratios,
            "cpu_ratios": cpu_ratios({k: v["cpu_s"] for k, v in s.items()}),
            "floor_s": w.get("floor"),
            "peak_memory_mb_serial": peak,
            "peak_rss_mb_per_process": peak_proc,
            "loadavg_at_start": self.loadavg_at_start,
            "targets": targets,
            "profiles": self.profiles,
            "checks": self.checks,
            "notes": self.notes,
        }
        print_report(result)
        return result


# (numerator, denominator) of each wall-time ratio; `par` is the parallel cold step
WALL_RATIOS = [
    ("cold", "tar_xf"),
    ("cold", "preset"),
    ("cold", "floor"),
    ("cold", "cp_tars"),
    ("preset", "floor"),
    ("preset", "tar_xf"),
    ("noop", "cold"),
    ("new_shard", "cold"),
    ("edit_json", "cold"),
    ("caption_switch", "preset_extract_captions"),
    ("caption_switch_back", "preset_extract_captions"),
    ("audit", "cold"),
    ("audit_deep", "cat_all_files"),
    ("par", "tar_xf"),
    ("par", "preset"),
    ("par", "cold"),
    ("cold", "cold_serial"),
]
CPU_RATIOS = [
    ("cold", "tar_xf"),
    ("cold", "preset"),
    ("noop", "cold"),
    ("new_shard", "cold"),
    ("caption_switch", "preset_extract_captions"),
    ("audit", "cold"),
]


def wall_ratios(w: dict[str, float], par: str) -> dict[str, float]:
    """`num / den` of the steps' wall times, for the pairs of WALL_RATIOS that were measured."""
    ratios = {}
    for num, den in WALL_RATIOS:
        num = par if num == "par" else num
        if num in w and den in w and w[den] > 0:
            ratios[f"{num} / {den}"] = w[num] / w[den]
    return ratios


def cpu_ratios(cpu: dict[str, float]) -> dict[str, float]:
    """`num / den` of the steps' CPU times, for the pairs of CPU_RATIOS that were measured."""
    return {f"{a} / {b}": cpu[a] / cpu[b] for a, b in CPU_RATIOS if a in cpu and cpu.get(b)}


def earlier_targets(
    s: dict[str, dict], ratios: dict[str, float], peak: float, a: argparse.Namespace
) -> list:
    """The targets of issues 3, 4, 5 and 8 (their scale; marked when this run's differs)."""
    small, par = not a.large, f"cold_P{a.jobs}"
    rows = [
        ("3,8", "cold <= 0.5 x preset (small images)", ratios.get("cold / preset"), 0.5, small),
        ("8", "cold <= 1.3 x tar xf (large images)", ratios.get("cold / tar_xf"), 1.3, a.large),
        ("3", "no-op <= 0.05 x cold", ratios.get("noop / cold"), 0.05, True),
        (
            "8",
            "no-op <= 0.02 x cold (100k samples)",
            ratios.get("noop / cold"),
            0.02,
            a.samples >= 100_000,
        ),
        ("3", "new shard <= 0.15 x cold (1 of 10)", ratios.get("new_shard / cold"), 0.15, True),
        (
            "8",
            "new shard <= 0.1 x cold (1 of 20)",
            ratios.get("new_shard / cold"),
            0.1,
            a.shards >= 20,
        ),
        (
            "4",
            "caption switch <= 0.5 x preset extract-captions",
            ratios.get("caption_switch / preset_extract_captions"),
            0.5,
            True,
        ),
        ("5", "audit <= 0.05 x cold", ratios.get("audit / cold"), 0.05, True),
    ]
    if "audit_deep" in s:
        deep = ratios.get("audit_deep / cat_all_files")
        rows.append(("5", "deep audit <= 1.5 x cat of every file", deep, 1.5, True))
    rows.append(("3,8", "peak memory <= 300 MB (serial doit)", peak, 300, True, "MB"))
    if par in s:
        what = f"peak memory <= 300 MB ({par}, summed RSS)"
        rows.append(("-", what, s[par]["peak_mb"], 300, True, "MB"))
    if "cold_half_shards" in s:
        half, full = s["cold_half_shards"]["peak_mb"], s["cold"]["peak_mb"]
        what = f"memory flat: peak({a.shards} shards) - peak({s['cold_half_shards']['shards']})"
        rows.append(("3", what, full - half, max(16.0, 0.1 * half), True, "MB"))
    return [target_row(*row) for row in rows]


def machine_facts() -> dict:
    """The machine the run was measured on."""
    tar = subprocess.run(["tar", "--version"], capture_output=True, text=True)
    return {
        "cpus": os.cpu_count(),
        "mem_gb": os.sysconf("SC_PHYS_PAGES") * PAGE / (1 << 30),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tar": tar.stdout.splitlines()[0],
        "loadavg_at_end": os.getloadavg(),
    }


def issue18_targets(ratios: dict[str, float], peak_proc_mb: float, a: argparse.Namespace) -> list:
    """Issue 18's targets: small images on tmpfs (30k in 10 shards), large images on disk."""
    small = not a.large and a.tmpfs
    large = a.large and not a.tmpfs
    rows = [
        ("cold <= 0.6 x preset (tmpfs)", ratios.get("cold / preset"), 0.6, small, "x"),
        ("cold <= 2.0 x floor (tar xf + caption writes)", ratios.get("cold / floor"), 2.0, small),
        (
            "new shard (1 of 11) <= 0.12 x cold",
            ratios.get("new_shard / cold"),
            0.12,
            small and a.shards == 10,
        ),
        (
            "caption switch <= 0.3 x preset's extract-captions",
            ratios.get("caption_switch / preset_extract_captions"),
            0.3,
            small,
        ),
        ("no-op <= 0.05 x cold", ratios.get("noop / cold"), 0.05, small),
        ("peak RSS <= 300 MB per process", peak_proc_mb, 300, True, "MB"),
        ("cold <= 0.8 x tar xf (large images, disk)", ratios.get("cold / tar_xf"), 0.8, large),
        ("cold <= 1.25 x cp of the tars (large, disk)", ratios.get("cold / cp_tars"), 1.25, large),
    ]
    return [target_row("18", *row) for row in rows]


def target_row(
    issue: str, what: str, value: float | None, limit: float, applies: bool, unit: str = "x"
) -> dict:
    """One target's verdict: PASS or FAIL against its limit, SKIP when not measured."""
    row = dict(issue=issue, target=what, applies=applies)
    if value is None:
        return {**row, "verdict": "SKIP"}
    verdict = "PASS" if value <= limit else "FAIL"
    return {**row, "value": value, "limit": limit, "unit": unit, "verdict": verdict}


def code_fingerprint() -> dict:
    """Which build code was measured (the code changes under the benchmark; no git here)."""
    files = sorted([REPO / "dodo.py", *REPO.glob("tasks/**/*.py"), *REPO.glob("state/**/*.py")])
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(REPO).as_posix().encode() + b"\0" + f.read_bytes())
    newest = max(files, key=lambda f: f.stat().st_mtime)
    return {
        "sha256": h.hexdigest()[:16],
        "newest_file": newest.relative_to(REPO).as_posix(),
        "newest_mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(newest.stat().st_mtime)),
    }


def print_report(r: dict) -> None:
    d = r["dataset"]
    print()
    print(
        f"== {d['samples']:,} samples in {d['shards']} shards, "
        f"{d['tar_bytes'] / MB:,.1f} MB of tars, {'large' if d['large'] else 'small'} images, "
        f"quirks {'on' if d['quirks'] else 'off'}; cache: {r['cache']}"
    )
    print(
        f"   code {r['code']['sha256']} (newest {r['code']['newest_file']} "
        f"{r['code']['newest_mtime']}), run started {r['started']}"
    )
    print_steps(r["steps"])
    if r.get("floor_s") is not None:
        print(f"{'floor = tar_xf + floor_captions':<34}{r['floor_s']:9.2f}")
    print(f"peak RSS of one process (ru_maxrss), our steps: {r['peak_rss_mb_per_process']:.1f} MB")
    load = r["machine"]["loadavg_at_end"]
    print(
        "load average at start "
        + " ".join(f"{v:.2f}" for v in r["loadavg_at_start"])
        + ", at end "
        + " ".join(f"{v:.2f}" for v in load)
    )
    print()
    print("ratios (wall time):")
    for k, v in r["ratios"].items():
        print(f"  {k:<48} {v:8.3f}")
    print()
    print("ratios (CPU time: less sensitive to other load on the machine, blind to I/O wait):")
    for k, v in r["cpu_ratios"].items():
        print(f"  {k:<48} {v:8.3f}")
    print()
    print("targets of issue 18 (tmpfs: 30k small samples in 10 shards; disk: large images):")
    print_targets([t for t in r["targets"] if t["issue"] == "18"])
    print("targets of earlier issues:")
    print_targets([t for t in r["targets"] if t["issue"] != "18"])
    print()
    print_profiles(r.get("profiles", {}))
    print()
    print_checks(r)


def print_steps(steps: list[dict]) -> None:
    """The table of steps: times, memory and I/O, one line each (with its runs and phases)."""
    head = (
        f"{'step':<26}{'wall s':>9}{'cpu s':>9}{'peak MB':>9}{'tree MB':>9}{'PSS MB':>8}"
        f"{'proc MB':>9}{'input MB':>10}{'read MB':>9}{'write MB':>9}{'sync s':>8}"
        f"{'other cpu':>10}"
    )
    print(head)
    print("-" * len(head))
    for s in steps:
        print(
            f"{s['step']:<26}{s['wall_s']:9.2f}{s['cpu_s']:9.2f}{s['peak_mb']:9.1f}"
            f"{s['tree_rss_peak_mb']:9.1f}{s.get('tree_pss_peak_mb', 0):8.1f}"
            f"{s['max_proc_rss_mb']:9.1f}"
            f"{s.get('input_bytes', 0) / MB:10.1f}{s['disk_read_mb']:9.1f}"
            f"{s['disk_write_mb']:9.1f}{s['sync_after_s']:8.2f}{s['other_cpu_s']:10.2f}"
            + ("" if s["rc"] == 0 else f"  EXIT {s['rc']}")
        )
        if "phases" in s:
            print(
                "    "
                + ", ".join(f"{k} {v:.2f}" for k, v in s["phases"].items() if k.endswith("_s"))
            )
        if "runs_wall_s" in s and len(s["runs_wall_s"]) > 1:
            print(
                "    runs: " + ", ".join(f"{v:.2f}" for v in s["runs_wall_s"]) + " (median shown)"
            )


def print_profiles(profiles: dict[str, dict]) -> None:
    """The top functions by self time of each profiled step."""
    for step, summary in profiles.items():
        if "by_self" not in summary:
            print(f"profile {step}: no profile written (exit {summary['rc']})")
            continue
        print(
            f"profile {step}: {summary['total_s']:.2f} s under cProfile; top by self time: "
            + "; ".join(f"{x['function']} {x['self_s']:.2f}" for x in summary["by_self"][:5])
        )


def print_checks(r: dict) -> None:
    """The correctness checks that failed, and the run's notes."""
    failed = [c for c in r["checks"] if not c["ok"]]
    print(f"correctness checks: {len(r['checks']) - len(failed)}/{len(r['checks'])} passed")
    for c in failed:
        print(f"  FAILED {c['check']}: {c['detail']}")
    for n in r["notes"]:
        print(f"note: {n}")


def print_targets(targets: list[dict]) -> None:
    """One line per target: verdict, value and limit; marked when the run's scale differs."""
    for t in targets:
        scope = "" if t["applies"] else "   (issue's setting differs from this run)"
        if t["verdict"] == "SKIP":
            print(f"  SKIP  issue {t['issue']:<4} {t['target']}{scope}")
            continue
        print(
            f"  {t['verdict']}  issue {t['issue']:<4} {t['target']:<52} "
            f"{t['value']:8.3f} {t['unit']} (limit {t['limit']:g}){scope}"
        )


def write_profiles(result: dict, path: Path) -> None:
    """The profile summaries as text, with the command and the code they ran."""
    lines = [
        f"cProfile summaries of bench/run.py {' '.join(sys.argv[1:])}",
        f"code {result['code']['sha256']}, run started {result['started']}; "
        "serial doit, main thread only (the caption rewrite threads are not seen)",
        "",
    ]
    for step, summary in result["profiles"].items():
        if "by_self" in summary:
            lines.append(format_summary(step, summary))
    path.write_text("\n".join(lines))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/run.py", description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=30000, help="total samples (default 30000)")
    p.add_argument("--shards", type=int, default=10, help="number of shards (default 10)")
    p.add_argument("--large", action="store_true", help="1024x1024/1792x1024 noisy images")
    p.add_argument("--quirks", action="store_true", help="generate the data quirks (default off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--serial", action="store_true", help="also a cold build with workers=1 (one process)"
    )
    p.add_argument("--jobs", type=int, default=1, help="also time `doit -n JOBS -P process` cold")
    p.add_argument("--flat", action="store_true", help="also a cold build of half the shards")
    p.add_argument("--repeat", type=int, default=3, help="runs of no-op and audit (median)")
    p.add_argument(
        "--cold-repeat", type=int, default=1, help="runs of tar_xf, preset and cold (median)"
    )
    p.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["tar", "floor", "cp", "preset", "switch", "audit"],
        help="leave steps out (e.g. at a scale where they would take too long)",
    )
    p.add_argument(
        "--deep", action="store_true", help="also `doit audit --deep` against cat of every file"
    )
    p.add_argument("--audit-args", nargs="*", default=[], help="extra arguments for doit audit")
    p.add_argument(
        "--min-image-size",
        default="auto",
        help="[dataloader] minimum_image_size written to dataset.toml: a number, 'keep' "
        "(the preset's 0.75), or 'auto' (0 for small images, kept for --large)",
    )
    p.add_argument("--gen-jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--workdir", default=str(DEFAULT_WORKDIR), help="scratch folder (default bench/work/run)"
    )
    p.add_argument(
        "--tmpfs",
        action="store_true",
        help="mount a tmpfs on the workdir for the run (needs root); unmounted at the end",
    )
    p.add_argument("--tmpfs-size", default="8G", help="size= of the tmpfs (default 8G)")
    p.add_argument(
        "--profile",
        action="store_true",
        help="also run our steps once more under cProfile (untimed): top functions in the result",
    )
    p.add_argument("--keep", action="store_true", help="keep the workdir at the end")
    p.add_argument("--out", help="write the result JSON here")
    args = p.parse_args(argv)
    if args.shards < 1 or args.samples < args.shards or args.cold_repeat < 1 or args.repeat < 1:
        p.error("need --shards >= 1, --samples >= --shards, repeats >= 1")
    return args


def stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends the run like Ctrl-C: the current step is killed, the tmpfs unmounted."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"bench: python {sys.executable}, repo {REPO}, workdir {args.workdir}", flush=True)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        result = Bench(args).run()
    except MountError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
        if result["profiles"]:
            text = out.with_suffix(".profile.txt")
            write_profiles(result, text)
            print(f"wrote {text}")
    bad = any(s["rc"] != 0 for s in result["steps"]) or not all(c["ok"] for c in result["checks"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
