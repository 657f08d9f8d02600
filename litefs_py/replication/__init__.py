"""Replication: shipping LTX files to a replica (uploader) and rebuilding databases from one
(restore). The restore API is re-exported here for the mount and the CLI."""

from .restore import RestoreResult, restore_database, restore_to_data_dir
from .restore_plan import RestorePlan, RestoreTarget, plan_restore

__all__ = [
    "RestorePlan",
    "RestoreResult",
    "RestoreTarget",
    "plan_restore",
    "restore_database",
    "restore_to_data_dir",
]
