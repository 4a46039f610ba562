"""Reusable LightningModules of the recipes."""

from lightning_meta.recipes.classifier import ConvClassifier, MultiHeadClassifier
from lightning_meta.recipes.dataset_classifier import DatasetClassifier
from lightning_meta.recipes.maml_classifier import MAMLClassifier

__all__ = ["ConvClassifier", "DatasetClassifier", "MAMLClassifier", "MultiHeadClassifier"]
