"""Invariants of the source layout that, broken, would fail in confusing ways elsewhere."""

import platform


def test_platform_is_the_standard_library_module():
    # platform/ is a source root; an __init__.py there would shadow this and break torch and Django.
    assert platform.__file__ is not None
    assert "site-packages" not in platform.__file__
    assert callable(platform.system)
