"""Reusable LightningModules of the recipes."""

from lightning_meta.recipes.actor_critic import AtariActorCritic
from lightning_meta.recipes.classifier import ConvClassifier, MultiHeadClassifier
from lightning_meta.recipes.dataset_classifier import DatasetClassifier
from lightning_meta.recipes.dynamical_lm import DynamicalLanguageModel
from lightning_meta.recipes.maml_classifier import MAMLClassifier

__all__ = [
    "AtariActorCritic",
    "ConvClassifier",
    "DatasetClassifier",
    "DynamicalLanguageModel",
    "MAMLClassifier",
    "MultiHeadClassifier",
]
