"""Reusable LightningModules of the recipes."""

from lightning_meta.recipes.classifier import ConvClassifier

__all__ = ["ConvClassifier"]
