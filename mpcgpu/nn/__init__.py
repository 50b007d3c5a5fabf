"""Neural networks: architecture specs, the model registry, the plaintext reference
executor and HDF5 weight files.  (Private layers will be exported here too.)"""
from __future__ import annotations

from . import spec, models, plain, weights
from .spec import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Conv2d, Dropout, Flatten, Linear,
                   MaxPool2d, Model, ReLU, Residual, Sequential, SpecError, ParamMismatchError,
                   count_params, output_shape, param_shapes, param_specs, trace, summary)
from .models import get_model, list_models
from .plain import PlainModel, SGD, init_params, softmax_cross_entropy
from .weights import WeightsError, load_weights, save_weights

__all__ = [
    "spec", "models", "plain", "weights",
    "AdaptiveAvgPool2d", "AvgPool2d", "BatchNorm2d", "Conv2d", "Dropout", "Flatten", "Linear",
    "MaxPool2d", "Model", "ReLU", "Residual", "Sequential", "SpecError", "ParamMismatchError",
    "count_params", "output_shape", "param_shapes", "param_specs", "trace", "summary",
    "get_model", "list_models", "PlainModel", "SGD", "init_params", "softmax_cross_entropy",
    "WeightsError", "load_weights", "save_weights",
]
