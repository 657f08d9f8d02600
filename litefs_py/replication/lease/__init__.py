"""Primary election: lease backends (static, etcd, a bucket object), the epoch each term
carries, and the keeper that tells the commit path whether it may still accept commits.

Standalone for now; docs/leases.md says how the mount is meant to use it.
"""

from .base import (
    Candidate,
    Holder,
    Lease,
    LeaseConfigError,
    LeaseEpochError,
    LeaseError,
    LeaseGrant,
    LeaseLostError,
    LeaseUnavailableError,
    Position,
    lease_clock,
    new_node_id,
    safety_margin,
)
from .bucket import BucketLease
from .etcd import EtcdLease
from .keeper import LeaseKeeper, LeaseLoss, LossReason, campaign
from .settings import (
    EtcdLeaseSettings,
    LeaseSettings,
    S3LeaseSettings,
    open_lease,
    parse_lease_settings,
)
from .static import StaticLease

__all__ = [
    "BucketLease",
    "Candidate",
    "EtcdLease",
    "EtcdLeaseSettings",
    "Holder",
    "Lease",
    "LeaseConfigError",
    "LeaseEpochError",
    "LeaseError",
    "LeaseGrant",
    "LeaseKeeper",
    "LeaseLoss",
    "LeaseLostError",
    "LeaseSettings",
    "LeaseUnavailableError",
    "LossReason",
    "Position",
    "S3LeaseSettings",
    "StaticLease",
    "campaign",
    "lease_clock",
    "new_node_id",
    "open_lease",
    "parse_lease_settings",
    "safety_margin",
]
