"""Owner-side selection strategies. Importing the package registers the built-ins:
random, feature, gradient, funcfeat, binning, full (see METHOD.md §2)."""

from selection import binning, feature, full, funcfeat, gradient, random_sampling  # noqa: F401
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
from selection.gradients import (
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
