"""Segmentation models (FCN-8s, FCN-ResNet, U-Net) behind one registry: create_model / list_models."""

from cityseg_fast.models.registry import create_model, list_models, model_from_config, register_model

__all__ = ["create_model", "list_models", "model_from_config", "register_model"]
