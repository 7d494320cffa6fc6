"""The floor's caption writes: one bare open/write/close per caption, nothing else.

    python -I -S bench/floor_captions.py PAIRS

PAIRS is a `marshal` file holding a list of `(path, caption)` byte-string pairs, made
untimed by `bench/run.py` from the JSONs `tar xf` extracted (the preset's
extract-captions.py rule: one `<stem>.txt` per JSON with a width). No JSON is parsed
here: this is the least any tool writing one caption file per sample must do.
The last line of stdout is a JSON object with the time of each phase, in seconds.

Stdlib only, run with `-I -S`: the interpreter's start is part of the step, as `tar`'s is.
"""

import json
import marshal
import os
import sys
import time

FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)


def load_pairs(path: str) -> list[tuple[bytes, bytes]]:
    """The (path, caption) pairs to write."""
    with open(path, "rb") as f:
        return marshal.load(f)


def write_all(pairs: list[tuple[bytes, bytes]]) -> None:
    """Write every caption with one open, one write and one close."""
    for path, text in pairs:
        fd = os.open(path, FLAGS, 0o644)
        os.write(fd, text)
        os.close(fd)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    pairs = load_pairs(argv[0])
    t1 = time.perf_counter()
    write_all(pairs)
    t2 = time.perf_counter()
    print(json.dumps({"load_s": t1 - t0, "write_s": t2 - t1, "files": len(pairs)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
