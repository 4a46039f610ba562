"""Reusable LightningModules of the recipes."""

from lightning_meta.models.actor_critic import AtariActorCritic
from lightning_meta.models.classifier import ConvClassifier, MultiHeadClassifier
from lightning_meta.models.dataset_classifier import DatasetClassifier
from lightning_meta.models.dynamical_lm import DynamicalLanguageModel
from lightning_meta.models.maml_classifier import MAMLClassifier

__all__ = [
    "AtariActorCritic",
    "ConvClassifier",
    "DatasetClassifier",
    "DynamicalLanguageModel",
    "MAMLClassifier",
    "MultiHeadClassifier",
]
