"""Neural networks: architecture specs (:mod:`.spec`: the structure of :mod:`.graph` and
the layer types), the layer types, one module each with all their facets, and their
registry (:mod:`.layers`), the walker both executors share (:mod:`.walker`), the model
registry (:mod:`.models`), the plaintext reference executor and trainer (:mod:`.plain`,
:mod:`.train_plain`), HDF5 weight files (:mod:`.weights`), and the private side: the
executor (:mod:`.private`), loss and evaluation (:mod:`.loss`), the optimiser
(:mod:`.optim`), the shared schedules (:mod:`.schedule`), training steps (:mod:`.trainer`),
the training loop with checkpoints and resume (:mod:`.training`) and checkpoints
(:mod:`.checkpoint`)."""

from __future__ import annotations

from . import models, plain, spec, weights
from .models import get_model, list_models
from .optim import PrivateSGD
from .plain import SGD, PlainModel, init_params, softmax_cross_entropy
from .private import PrivateModel, Profile, share_params
from .spec import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    MaxPool2d,
    Model,
    ParamMismatchError,
    ReLU,
    Residual,
    Sequential,
    SpecError,
    count_params,
    output_shape,
    param_shapes,
    param_specs,
    summary,
    trace,
)
from .trainer import evaluate, train_step
from .weights import WeightsError, load_weights, save_weights

__all__ = [
    "spec",
    "models",
    "plain",
    "weights",
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "Dropout",
    "Flatten",
    "Linear",
    "MaxPool2d",
    "Model",
    "ReLU",
    "Residual",
    "Sequential",
    "SpecError",
    "ParamMismatchError",
    "count_params",
    "output_shape",
    "param_shapes",
    "param_specs",
    "trace",
    "summary",
    "get_model",
    "list_models",
    "PlainModel",
    "SGD",
    "init_params",
    "softmax_cross_entropy",
    "WeightsError",
    "load_weights",
    "save_weights",
    "PrivateModel",
    "Profile",
    "share_params",
    "PrivateSGD",
    "train_step",
    "evaluate",
]
