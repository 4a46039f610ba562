"""LightningModule mixins for meta-learners with a differentiable inner loop."""

from lightning_meta.checkpointing import CheckpointedSegment
from lightning_meta.mixins.maml import MAMLMixin, MAMLResult, MAMLSettings

__all__ = ["CheckpointedSegment", "MAMLMixin", "MAMLResult", "MAMLSettings"]
