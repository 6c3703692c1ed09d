"""Field machinery of the config: range checks name the field, and values parse by declared type."""
import dataclasses

import pytest

from loopgolf.config_fields import ConfigError, at_least, coerce, finite, fractions, from_dict, set_dotted


@dataclasses.dataclass
class Inner:
    lr: float = 0.1
    steps: int = 3
    on: bool = False
    name: str = "x"


@dataclasses.dataclass
class Outer:
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_range_checks_name_the_field():
    with pytest.raises(ConfigError, match=r"s\.lr=nan must be a finite number"):
        finite("s", Inner(lr=float("nan")))
    with pytest.raises(ConfigError, match=r"s\.steps=0 must be >= 1 \(hint\)"):
        at_least("s", Inner(steps=0), 1, "steps", hint=" (hint)")
    with pytest.raises(ConfigError, match=r"s\.lr=1.5 must be a fraction in \[0, 1\]"):
        fractions("s", Inner(lr=1.5), "lr")
    finite("s", Inner())
    at_least("s", Inner(), 1, "steps")


@pytest.mark.parametrize("value,t,want", [("1_000", int, 1000), ("2e3", int, 2000), (3.0, int, 3),
                                          ("on", bool, True), ("0", bool, False), ("1e-3", float, 0.001),
                                          (5, str, "5")])
def test_coerce_by_declared_type(value, t, want):
    assert coerce(value, t, "k") == want


@pytest.mark.parametrize("value,t", [("1.5", int), (2.5, int), ("maybe", bool), ("x", float)])
def test_coerce_refuses_with_the_key(value, t):
    with pytest.raises(ConfigError, match=r"^k="):
        coerce(value, t, "k")


def test_from_dict_and_set_dotted():
    o = from_dict(Outer, {"inner": {"lr": "0.5", "on": "true"}}, "")
    assert o.inner == Inner(lr=0.5, on=True)
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['inner.bogus'\]"):
        from_dict(Outer, {"inner": {"bogus": 1}}, "")
    set_dotted(o, "inner.steps", "7")
    assert o.inner.steps == 7
    with pytest.raises(ConfigError, match="unknown field 'nope'; valid fields: lr, name, on, steps"):
        set_dotted(o, "inner.nope", "1")
    with pytest.raises(ConfigError, match="no config section 'missing'"):
        set_dotted(o, "missing.x", "1")
