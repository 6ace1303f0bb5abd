import pytest

from qbench.errors import QbenchError
from qbench.method import pq_layout
from qbench.registry import DATASETS, METHODS, Param, Registry, parse_key_values


def test_builtin_plugins_are_discovered():
    assert "float" in METHODS.names()
    assert {"digits", "synthetic"} <= set(DATASETS.names())


def test_unknown_name_lists_allowed():
    with pytest.raises(QbenchError, match=r"unknown method 'nope'; allowed: .*float"):
        METHODS.get("nope")


def test_resolve_params_fills_defaults_and_parses_types():
    params = METHODS.resolve_params("float", {"lr": "0.01", "select": "false"})
    assert params["lr"] == 0.01 and params["select"] is False
    assert params["dim"] == 64


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"nope": "1"}, "unknown parameter 'nope' for method float; allowed: "),
        ({"dim": "abc"}, "parameter dim of method float: 'abc' is not a valid int"),
        ({"dim": "1.5"}, "not a valid int"),
        ({"loss": "hinge"}, "'hinge' is not allowed; allowed: cosine, ip"),
        ({"select": "maybe"}, "not a valid bool"),
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
