"""LightningModule mixins for meta-learners with a differentiable inner loop."""

from lightning_meta.mixins.maml import CheckpointedSegment, MAMLMixin, MAMLResult, MAMLSettings

__all__ = ["CheckpointedSegment", "MAMLMixin", "MAMLResult", "MAMLSettings"]
