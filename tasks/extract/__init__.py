"""Extraction: one streaming pass over a tar into `data/`, the manifest and a partition.

- `tarstream`: the tar reader (headers, members, the shard's hash as it is read)
- `claims`: members staged while a shard is read; what stands in the way of a path
- `shard`: the `extract:<shard>` step (read, decide samples, commit, mark done)
- `pool`: shards read by worker processes ahead of the manifest's one writer
"""
