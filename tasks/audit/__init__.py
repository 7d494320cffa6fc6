"""`doit audit` and `doit repair`: is the build what the manifest says, and putting it back.

- `run`: the audit itself (files, partitions, shards, quirks, pairing, the table)
- `stat_pass`: the stat of every file the manifest records (in processes when large)
- `deep`: `--deep`, reading and hashing every file, checksums and image checks
- `pairing`: images, captions and table rows pair up; strays in `data/`
- `dataloader`: the SimpleTuner entry names what the build wrote
- `report`: findings, their kinds, the report file and its summary
- `repair`: restores damage the audit found, from the tars and the partitions
"""
