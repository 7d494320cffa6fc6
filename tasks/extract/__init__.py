"""Extraction: one streaming pass over a tar into `data/`, the manifest and a partition.

- `tarstream`: the tar reader (headers, members, the shard's hash as it is read)
- `claims`: who owns a path in `data/`; members written under their claim
- `shard`: the `extract:<shard>` step (read, decide samples, commit, mark done)
"""
