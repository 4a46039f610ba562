"""LightningModule mixins for meta-learners with a differentiable inner loop."""

from lightning_meta.mixins.maml import EpisodeBatch, MAMLMixin, MAMLResult

__all__ = ["EpisodeBatch", "MAMLMixin", "MAMLResult"]
