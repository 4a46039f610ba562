"""Reusable LightningModules of the recipes."""

from lightning_meta.recipes.classifier import ConvClassifier, MultiHeadClassifier

__all__ = ["ConvClassifier", "MultiHeadClassifier"]
