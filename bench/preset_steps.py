"""The preset's steps, run in a child process so that `bench/run.py` can time them.

Uses `tests/preset_reference.py` (the faithful re-implementation of the preset's shell
loop, compile.py and extract-captions.py). compile.py writes `dalle3.parquet` with
pandas (`df.to_parquet(index=False)`: pyarrow engine, snappy); pandas is not installed
here, so the rows are written with pyarrow directly, with the same columns and codec.

    python bench/preset_steps.py pipeline DATA_DIR TABLE SHARD...   # tar xf + compile + captions
    python bench/preset_steps.py captions DATA_DIR FIELD             # extract-captions.py alone

The last line of stdout is a JSON object with the time of each phase, in seconds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.preset_reference import compile_rows, extract_captions, tar_extract_all  # noqa: E402


def write_table(rows: list[dict], table: Path) -> None:
    """compile.py's `pd.DataFrame(rows, columns=[...]).to_parquet(table, index=False)`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("width", pa.int64()),
            ("height", pa.int64()),
            ("caption", pa.string()),
            ("filename", pa.string()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), table, compression="snappy")


def pipeline(data_dir: Path, table: Path, shards: list[Path]) -> dict:
    """The whole preset: extract every shard, compile.py, extract-captions.py."""
    t0 = time.perf_counter()
    tar_extract_all(shards, data_dir)
    t1 = time.perf_counter()
    rows = compile_rows(data_dir)
    t2 = time.perf_counter()
    write_table(rows, table)
    t3 = time.perf_counter()
    extract_captions(data_dir)
    t4 = time.perf_counter()
    return {
        "tar_xf_s": t1 - t0,
        "compile_rows_s": t2 - t1,
        "write_parquet_s": t3 - t2,
        "extract_captions_s": t4 - t3,
        "rows": len(rows),
    }


def captions(data_dir: Path, field: str) -> dict:
    """extract-captions.py alone (the preset's way to switch the caption field)."""
    t0 = time.perf_counter()
    extract_captions(data_dir, field)
    return {"extract_captions_s": time.perf_counter() - t0, "caption_field": field}


def main(argv: list[str]) -> int:
    if len(argv) >= 4 and argv[0] == "pipeline":
        result = pipeline(Path(argv[1]), Path(argv[2]), [Path(p) for p in argv[3:]])
    elif len(argv) == 3 and argv[0] == "captions":
        result = captions(Path(argv[1]), argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
