"""Strategy parameters: declared constraints, checked (and coerced) before any computation."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

from selection import (
    Boolean,
    Candidates,
    FeatureIndexCache,
    HardSet,
    Interval,
    Job,
    Options,
    ParamError,
    Ranked,
    Strategy,
    available,
    base,
    check_params,
    get_strategy,
    register,
    strategy_class,
    wire_params,
)

BUILTINS = ["random", "feature", "gradient", "funcfeat", "binning", "full"]
NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("method", "params", "name", "says"),
    [
        ("gradient", {"batch_size": -1}, "batch_size", "must be an integer in [1, 65536], got -1"),
        ("gradient", {"workers": 1e9}, "workers", "[1, 64], got 1000000000"),
        ("funcfeat", {"prefilter_factor": -1e12}, "prefilter_factor", "got -1000000000000"),
        ("binning", {"n_bins": 1e12}, "n_bins", "[1, 1000]"),
        ("gradient", {"lam": 1e308}, "lam", "(0, 1000000], got 1e+308"),
        ("gradient", {"lam": 0.0}, "lam", "(0, 1000000]"),  # OMP needs lam > 0
        ("funcfeat", {"lam2": -1.0}, "lam2", "[0, 1000000]"),
        ("funcfeat", {"psi_in_pick": 0.5}, "psi_in_pick", "0 or 1"),
        ("binning", {"diverse_share": 1.5}, "diverse_share", "[0, 1]"),
        ("feature", {"flat_threshold": 0, "nprobe": -1}, "flat_threshold", "got 0"),
        ("feature", {"nprobe": -1}, "nprobe", "[1, 65536], got -1"),
        ("feature", {"query_batch": -1}, "query_batch", "got -1"),
        ("feature", {"ivf_storage": 1.0}, "ivf_storage", "not over the wire"),
        ("feature", {"nprobe": 2.5}, "nprobe", "integer"),
        ("gradient", {"lam": NAN}, "lam", "got nan"),
        ("binning", {"n_bins": NAN}, "n_bins", "got nan"),
        ("binning", {"diverse_share": INF}, "diverse_share", "got inf"),
        ("gradient", {"prefilter_min": 2**70}, "prefilter_min", "[1, 10000000]"),
    ],
)
def test_hostile_wire_values_are_refused(method, params, name, says) -> None:
    with pytest.raises(ParamError) as info:
        wire_params(method, params)
    assert info.value.name == name
    assert str(info.value).startswith(f"{name}: ")
    assert says in str(info.value)
    assert isinstance(info.value, ValueError)


def test_good_wire_values_are_coerced() -> None:
    got = wire_params(
        "funcfeat",
        {"lam": 1, "lam2": 0.0, "psi_in_pick": 1.0, "prefilter_min": 200.0, "batch_size": 64.0},
    )
    assert got == {
        "lam": 1.0,
        "lam2": 0.0,
        "psi_in_pick": True,
        "prefilter_min": 200,
        "batch_size": 64,
    }
    assert [type(v) for v in got.values()] == [float, float, bool, int, int]
    assert wire_params("binning", {"n_bins": 7.0, "diverse_share": 1}) == {
        "n_bins": 7,
        "diverse_share": 1.0,
    }
    assert wire_params("feature", {}) == {}


def test_wire_values_must_be_numbers() -> None:
    with pytest.raises(ParamError, match="n_bins: wire values must be numbers"):
        wire_params("binning", {"n_bins": "5"})
    with pytest.raises(ParamError, match="wire values must be numbers, got None"):
        wire_params("gradient", {"prefilter_min": None})  # None only from Python


@pytest.mark.parametrize("method", ["random", "full"])
def test_parameterless_strategies_take_none(method) -> None:
    with pytest.raises(ParamError, match=f"'{method}' takes no parameters") as info:
        wire_params(method, {"seed": 1.0})
    assert info.value.name == "seed"
    with pytest.raises(ParamError, match="takes no parameters"):
        get_strategy(method, seed=1)


def test_unknown_names_list_the_known_ones() -> None:
    with pytest.raises(ParamError, match="known: n_bins, diverse_share") as info:
        wire_params("binning", {"bins": 5.0})
    assert info.value.name == "bins"
    with pytest.raises(ParamError, match="not a parameter of 'gradient'; known: lam, "):
        get_strategy("gradient", lam2=1.0)  # funcfeat's, not gradient's
    with pytest.raises(KeyError, match="known"):
        wire_params("no-such-method", {})


def test_python_values_checked_too() -> None:
    with pytest.raises(ParamError, match=r"n_bins: must be an integer in \[1, 1000\], got 0"):
        get_strategy("binning", n_bins=0)
    with pytest.raises(ParamError, match="ivf_storage: must be one of 'flat', 'sq8', got 'ivf'"):
        get_strategy("feature", ivf_storage="ivf")
    with pytest.raises(ParamError, match="workers"):
        get_strategy("gradient", workers=True)  # a bool is not a worker count
    assert get_strategy("feature", ivf_storage="sq8").cache.params.ivf_storage == "sq8"
    assert get_strategy("gradient", prefilter_min=None).prefilter_min is None
    assert get_strategy("gradient", prefilter_min=300.0).prefilter_min == 300
    assert get_strategy("funcfeat", psi_in_pick=True).psi_in_pick is True


def test_cache_is_an_owner_object_not_a_wire_parameter() -> None:
    cache = FeatureIndexCache()
    assert get_strategy("feature", cache=cache, nprobe=8).cache is cache
    with pytest.raises(ParamError, match="not a parameter of 'feature'") as info:
        wire_params("feature", {"cache": 1.0})
    assert info.value.name == "cache"


@pytest.mark.parametrize("method", BUILTINS)
def test_builtin_declarations_match_their_constructors(method) -> None:
    cls = strategy_class(method)
    assert cls.param_constraints is not None, f"{method} must declare param_constraints"
    sig = inspect.signature(cls.__init__).parameters
    ctor = {
        k: p.default for k, p in sig.items() if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
    }
    assert set(ctor) - cls.local_params == set(cls.param_constraints)
    defaults = {k: v for k, v in ctor.items() if k in cls.param_constraints}
    assert check_params(cls, defaults, wire=False) == defaults  # the defaults are allowed


def test_interval_ends_and_kinds() -> None:
    def ok(c, v) -> bool:
        try:
            c.coerce(v, wire=True)
        except ValueError:
            return False
        return True

    closed = {"both": [1, 1, 1], "left": [1, 1, 0], "right": [0, 1, 1], "neither": [0, 1, 0]}
    for how, want in closed.items():
        iv = Interval(float, 0, 1, closed=how)
        assert [ok(iv, v) for v in (0, 0.5, 1)] == [bool(w) for w in want], how
    unbounded = Interval(int, None, None)
    assert str(unbounded) == "an integer in (-inf, inf)"
    assert ok(unbounded, -(10**30)) and not ok(unbounded, 1.5) and not ok(unbounded, INF)
    assert not ok(Interval(float, 0, None), 10**400)  # beyond float range
    assert str(Interval(int, 1, None, allow_none=True)) == "an integer in [1, inf) or None"
    assert Boolean().coerce(0.0, wire=True) is False
    with pytest.raises(ValueError, match="not over the wire"):
        Options(("a", "b")).coerce("a", wire=True)
    with pytest.raises(ValueError):
        Interval(str, 0, 1)
    with pytest.raises(ValueError):
        Interval(int, 2, 1)


# plugins -------------------------------------------------------------------------------------


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plugins registered in a test are gone afterwards."""
    available()  # load entry-point plugins into the real registry first
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))


class _First(Strategy):
    def __init__(self, power: float = 1.0) -> None:
        self.power = power

    def _rank(self, job: Job) -> Ranked:
        n = len(job.candidates)
        return Ranked(np.arange(n), np.full(n, self.power, np.float32))


def _data() -> tuple[Candidates, HardSet]:
    labels = np.zeros(6, np.int64)
    return Candidates(np.arange(6, dtype=np.int64), labels), HardSet(labels[:2])


def test_undeclared_plugin_refuses_wire_params_but_works_from_python(registry) -> None:
    register("t_undeclared")(type("Undeclared", (_First,), {}))
    with pytest.raises(ParamError, match="declares no `param_constraints`") as info:
        wire_params("t_undeclared", {"power": 2.0})
    assert info.value.name == "power"
    assert wire_params("t_undeclared", {}) == {}
    strat = get_strategy("t_undeclared", power="anything")  # unchecked, as before
    assert strat.power == "anything"
    assert len(get_strategy("t_undeclared").select(*_data(), 3).row_ids) == 3


def test_declared_plugin_is_protected(registry) -> None:
    cls = type("Declared", (_First,), {"param_constraints": {"power": Interval(float, 0, 10)}})
    register("t_declared")(cls)
    with pytest.raises(ParamError, match=r"power: must be a number in \[0, 10\], got 1e\+308"):
        wire_params("t_declared", {"power": 1e308})
    with pytest.raises(ParamError, match="known: power"):
        wire_params("t_declared", {"pow": 1.0})
    with pytest.raises(ParamError, match="power"):
        get_strategy("t_declared", power=-1)
    strat = get_strategy("t_declared", **wire_params("t_declared", {"power": 3}))
    assert strat.power == 3.0 and type(strat.power) is float
    assert len(strat.select(*_data(), 4).row_ids) == 4


def test_registry_is_restored() -> None:
    assert not {"t_undeclared", "t_declared"} & set(available())
    assert set(BUILTINS) <= set(available())
