"""Model families built at any width: ``create_model(family, width=..., in_shape=..., num_classes=...)``."""
from widthkit.models.registry import (create_model, list_models, model_kwargs, register_model, register_prefix,
                                      validate_kwargs)
from widthkit.models import mlp as _mlp, cnn as _cnn, conv1d as _conv1d  # noqa: F401  (register)
from widthkit.models.timm_models import set_attention_scale  # registers resnet, vit and the timm: prefix

__all__ = ["create_model", "list_models", "model_kwargs", "register_model", "register_prefix", "validate_kwargs",
           "set_attention_scale"]
