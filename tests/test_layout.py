"""Invariants of the source layout that, broken, would fail in confusing ways elsewhere."""

import platform

from aggregator import wire as aggregator_wire
from hospitals import wire as hospital_wire


def test_platform_is_the_standard_library_module():
    # platform/ is a source root; an __init__.py there would shadow this and break torch and Django.
    assert platform.__file__ is not None
    assert "site-packages" not in platform.__file__
    assert callable(platform.system)


def public_names(module: object) -> dict[str, object]:
    return {name: value for name, value in vars(module).items() if name.isupper()}


def test_both_parties_use_the_same_wire_names():
    assert public_names(aggregator_wire) == public_names(hospital_wire)
