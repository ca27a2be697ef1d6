from __future__ import annotations

import pytest

from robustbench_fmnist.errors import ConfigError, UnknownNameError
from robustbench_fmnist.registry import Registry


@pytest.fixture
def colors() -> Registry[int]:
    registry: Registry[int] = Registry("color")
    for i, name in enumerate(["brightness", "contrast", "gamma_up", "gamma_down"]):
        registry.add(name, i)
    return registry


def test_get_returns_registered_entry(colors: Registry[int]) -> None:
    assert colors.get("contrast") == 1
    assert "gamma_up" in colors and "gamma" not in colors
    assert len(colors) == 4


def test_unknown_name_suggests_the_closest_and_lists_all(colors: Registry[int]) -> None:
    with pytest.raises(UnknownNameError) as info:
        colors.get("brightnes")
    message = str(info.value)
    assert "unknown color 'brightnes'; did you mean 'brightness'?" in message
    assert "Available: brightness, contrast, gamma_down, gamma_up" in message
    assert isinstance(info.value, ConfigError)


def test_unknown_name_without_close_match_has_no_suggestion(colors: Registry[int]) -> None:
    with pytest.raises(UnknownNameError, match=r"unknown color 'zzz'\. Available"):
        colors.get("zzz")


def test_names_are_sorted_and_filtered_by_wildcard(colors: Registry[int]) -> None:
    assert colors.names() == ["brightness", "contrast", "gamma_down", "gamma_up"]
    assert colors.names("gamma_*") == ["gamma_down", "gamma_up"]
    assert list(colors) == colors.names()


def test_registering_a_name_twice_is_refused(colors: Registry[int]) -> None:
    with pytest.raises(ValueError, match="already registered"):
        colors.add("contrast", 9)
