"""The MetaSchedule tuning records shipped with edgec, one database per target preset (see README.md).

A package only so that the records install with edgec and are found wherever it runs:
`compiler.tuning.database.shipped_root()` is this directory.
"""
