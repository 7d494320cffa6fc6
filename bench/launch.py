"""Run one command and write its resource usage as JSON: `launch.py RESULT -- CMD...`.

`bench/run.py` starts every timed step through this small process instead of forking
the command itself. Linux carries the RSS high-water mark of the forking process into
the child's `ru_maxrss` (across exec), so a command forked from the benchmark (which
holds pyarrow tables) would report the benchmark's memory as its own. Forked from
here, the command's `ru_maxrss` includes at most this launcher's few MB.

Run it as `python -I -S bench/launch.py ...`: stdlib only, nothing else imported.
"""

import json
import os
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    result_path, cmd = argv[0], argv[2:]
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        finally:
            os._exit(127)
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    with open("/proc/self/statm") as f:
        launcher_pages = int(f.read().split()[1])
    result = {
        "rc": os.waitstatus_to_exitcode(status),
        "wall_s": wall,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
        "maxrss_kb": ru.ru_maxrss,
        "inblock": ru.ru_inblock,
        "oublock": ru.ru_oublock,
        "launcher_rss_kb": launcher_pages * os.sysconf("SC_PAGE_SIZE") // 1024,
    }
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
