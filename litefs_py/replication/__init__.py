"""Replication: shipping LTX files to a replica (uploader) and rebuilding databases from one
(restore). The restore API is re-exported here for the mount and the CLI."""

from .restore import (
    RestoreRequest,
    RestoreResult,
    make_plan,
    restore,
    restore_database,
    restore_to_data_dir,
)
from .restore_plan import RestorePlan, RestoreTarget, plan_restore

__all__ = [
    "RestorePlan",
    "RestoreRequest",
    "RestoreResult",
    "RestoreTarget",
    "make_plan",
    "plan_restore",
    "restore",
    "restore_database",
    "restore_to_data_dir",
]
