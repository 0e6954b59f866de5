"""Owner-side selection strategies. Importing the package registers the built-ins:
random, feature, gradient, funcfeat, binning, full (see METHOD.md §2).

Every module of this folder is imported here, so a strategy is one file: selection/<name>.py
with a `@register("<name>")` class is found without editing anything else.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from selection._contract import allocate, finalize, plan_classes, validate
from selection.base import (
    Candidates,
    HardSet,
    Head,
    Job,
    Ranked,
    SelectionResult,
    Strategy,
    Timer,
    available,
    get_strategy,
    register,
    strategy_class,
    wire_params,
)
from selection.feature import FeatureIndexCache, IndexParams
from selection.last_layer_grads import (
    iter_last_layer_gradients,
    last_layer_gradients,
    softmax_residuals,
)
from selection.omp import OMPResult, omp, omp_naive
from selection.params import Boolean, Constraint, Interval, Options, ParamError, check_params

__all__ = [
    "Boolean",
    "Candidates",
    "Constraint",
    "FeatureIndexCache",
    "HardSet",
    "Head",
    "IndexParams",
    "Interval",
    "Job",
    "OMPResult",
    "Options",
    "ParamError",
    "Ranked",
    "SelectionResult",
    "Strategy",
    "Timer",
    "allocate",
    "available",
    "check_params",
    "finalize",
    "get_strategy",
    "iter_last_layer_gradients",
    "last_layer_gradients",
    "omp",
    "omp_naive",
    "plan_classes",
    "register",
    "softmax_residuals",
    "strategy_class",
    "validate",
    "wire_params",
]

for _module in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_module.name}")
