import pytest

from qbench.core.errors import QbenchError
from qbench.methods import pq_layout
from qbench.registry import DATASETS, METHODS, Param, Registry, Space, parse_key_values, space_of


def test_builtin_plugins_are_discovered():
    assert "float" in METHODS.names()
    assert {"digits", "synthetic"} <= set(DATASETS.names())


def test_unknown_name_lists_allowed():
    with pytest.raises(QbenchError, match=r"unknown method 'nope'; allowed: .*float"):
        METHODS.get("nope")


def test_resolve_params_fills_defaults_and_parses_types():
    params = METHODS.resolve_params("float", {"lr": "0.01", "augment": "false"})
    assert params["lr"] == 0.01 and params["augment"] is False
    assert params["dim"] == 64


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"nope": "1"}, "unknown parameter 'nope' for method float; allowed: "),
        ({"dim": "abc"}, "parameter dim of method float: 'abc' is not a valid int"),
        ({"dim": "1.5"}, "not a valid int"),
        ({"loss": "hinge"}, "'hinge' is not allowed; allowed: cosine, ip"),
        ({"augment": "maybe"}, "not a valid bool"),
    ],
)
def test_bad_params_raise_one_line_errors(overrides, message):
    with pytest.raises(QbenchError, match=message):
        METHODS.resolve_params("float", overrides)


def test_parse_key_values():
    assert parse_key_values(["a=1", " b = x "]) == {"a": "1", "b": "x"}
    with pytest.raises(QbenchError, match="key=value"):
        parse_key_values(["oops"])


def test_registry_rejects_duplicate_names_and_missing_attributes():
    reg = Registry("method", "qbench.methods", "qbench.test-none")

    @reg.register
    class A:
        name, description, params = "a", "first", (Param("x", int, 1, "x"),)

    class B:
        name, description, params = "a", "second", ()

    with pytest.raises(TypeError, match="two method plugins named 'a'"):
        reg.register(B)

    class C:
        name = "c"

    with pytest.raises(TypeError, match="lacks attribute"):
        reg.register(C)


@pytest.mark.parametrize("bits, layout", [(12, (2, 6)), (24, (3, 8)), (32, (4, 8)),
                                          (48, (6, 8)), (7, (1, 7))])
def test_pq_layout_follows_the_code_budget(bits, layout):
    assert pq_layout(bits) == layout


def test_pq_layout_with_explicit_subspaces():
    assert pq_layout(32, 8) == (8, 4)
    with pytest.raises(QbenchError, match="subspaces=5 does not fit 32 bits; allowed: "):
        pq_layout(32, 5)
    with pytest.raises(QbenchError, match="positive"):
        pq_layout(0)


def test_entry_point_plugins_are_registered(monkeypatch):
    import qbench.registry as registry

    class ThirdParty:
        name, description, params = "third-party", "from an installed package", ()

    class FakeEntryPoint:
        def load(self):
            return ThirdParty

    seen = {}

    def fake_entry_points(group):
        seen["group"] = group
        return [FakeEntryPoint()]

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    reg = Registry("method", "qbench.methods", "qbench.methods")
    assert reg.get("third-party") is ThirdParty
    assert seen["group"] == "qbench.methods"


@pytest.mark.parametrize("key, value", [("batch_size", "0"), ("epochs", "-3"), ("dim", "-4"),
                                        ("lr", "0")])
def test_values_below_the_minimum_are_refused(key, value):
    with pytest.raises(QbenchError, match=f"parameter {key} of method float: .* is below the "
                                          "minimum"):
        METHODS.resolve_params("float", {key: value})


def test_a_space_inside_the_parameter_range_is_accepted_and_described():
    p = Param("lam", float, 0.3, "weight", minimum=0.0, tune=Space(1e-3, 3.0, log=True))
    assert p.tune.describe() == "log 0.001..3"
    assert Space(choices=("l2", "l1")).describe() == "{l2, l1}"
    assert Space(1e-4, 1e-2, log=True, shared=True).as_dict() == {
        "low": 1e-4, "high": 1e-2, "log": True, "shared": True}


@pytest.mark.parametrize("param, message", [
    (dict(type=float, default=0.5, minimum=0.0, maximum=1.0, tune=Space(0.1, 2.0)),
     r"parameter x: search space 0.1..2 lies outside the allowed range 0..1"),
    (dict(type=int, default=1, minimum=1, tune=Space(0, 4)),
     r"search space 0..4 lies outside the allowed range 1..inf"),
    (dict(type=int, default=1, tune=Space(1, 2.5)), "an int parameter needs integer bounds"),
    (dict(type=str, default="a", choices=("a", "b"), tune=Space(0, 1)),
     r"a range needs an int or float parameter without choices"),
    (dict(type=str, default="a", choices=("a", "b"), tune=Space(choices=("a", "c"))),
     r"choice 'c' is not allowed"),
])
def test_a_space_outside_what_the_parameter_allows_is_refused_naming_both(param, message):
    with pytest.raises(ValueError, match=message):
        Param("x", help="x", **param)


@pytest.mark.parametrize("kw, message", [
    ({"low": 0.0, "high": 1.0, "log": True}, "a log Space needs low > 0"),
    ({"low": 2.0, "high": 1.0}, "finite low < high"),
    ({"low": 1.0}, "needs low and high, or choices"),
    ({"choices": ("a",)}, "at least two choices"),
    ({"low": 0.0, "high": 1.0, "choices": ("a", "b")}, "either choices or low..high"),
])
def test_a_malformed_space_is_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        Space(**kw)


def test_space_of_separates_a_methods_own_knobs_from_the_shared_stage1_knobs():
    class Plugin:
        params = (Param("lr", float, 1e-3, "lr", minimum=1e-12,
                        tune=Space(1e-4, 1e-2, log=True, shared=True)),
                  Param("lam", float, 0.3, "lam", minimum=0.0, tune=Space(1e-3, 3.0, log=True)),
                  Param("dim", int, 64, "dim"))

    assert list(space_of(Plugin)) == ["lam"]
    assert list(space_of(Plugin, shared=True)) == ["lr"]


@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "1e400"])
def test_non_finite_floats_are_refused_naming_the_value_and_the_range(text):
    param = Param("lr", float, 0.01, "learning rate", minimum=0.0)
    with pytest.raises(QbenchError, match=r"parameter lr: .* is not allowed; allowed: a finite "
                                          r"number in \[0, inf\]"):
        param.parse(text)
    assert Param("x", float, 0.0, "declared non-finite", finite=False).parse(text) != 0.0


def test_an_infinite_int_is_a_one_line_error():
    with pytest.raises(QbenchError, match="parameter hidden: inf is not a valid int"):
        Param("hidden", int, 1, "width").parse(float("inf"))


def test_an_entry_point_that_fails_to_load_is_a_one_line_error(monkeypatch):
    """A plugin written against a module that moved (e.g. the old flat qbench.method)."""
    import qbench.registry as registry

    class Broken:
        name, value = "old-plugin", "old_package:OldMethod"

        def load(self):
            raise ModuleNotFoundError("No module named 'qbench.method'")

    monkeypatch.setattr(registry, "entry_points", lambda group: [Broken()])
    reg = Registry("method", "qbench.methods", "qbench.methods")
    with pytest.raises(QbenchError, match=r"method plugin entry point 'old-plugin' "
                                          r"\(old_package:OldMethod\) failed to load: "
                                          r"ModuleNotFoundError: No module named 'qbench.method'"):
        reg.names()
