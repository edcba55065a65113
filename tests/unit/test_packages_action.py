"""The action unistra.itop.packages (plugins/action/packages.py): what dpkg's answer says is not installed; which
names it asks dpkg about at all (its run against a real host is in every Molecule scenario and the lab)."""

from __future__ import annotations

import pytest
from ansible_collections.unistra.itop.plugins.action.packages import PLAIN_NAME, not_installed


def test_installed_and_configured_packages_are_not_missing() -> None:
    output = "nginx\tii \npython3-venv\tii \n"
    assert not_installed(["nginx", "python3-venv"], output) == []


@pytest.mark.parametrize(
    ("output", "missing"),
    [
        pytest.param("nginx\tii \n", ["php8.2-fpm"], id="not listed (dpkg does not know it)"),
        pytest.param("nginx\tii \nphp8.2-fpm\trc \n", ["php8.2-fpm"], id="removed, its configuration left"),
        pytest.param("nginx\tii \nphp8.2-fpm\tiU \n", ["php8.2-fpm"], id="unpacked, not configured"),
        pytest.param("nginx\tii \nphp8.2-fpm\tun \n", ["php8.2-fpm"], id="known, not installed"),
        pytest.param("", ["nginx", "php8.2-fpm"], id="nothing"),
    ],
)
def test_anything_but_ii_is_missing(output: str, missing: list[str]) -> None:
    assert not_installed(["nginx", "php8.2-fpm"], output) == missing


def test_a_multi_arch_package_counts_once_installed() -> None:
    output = "libc6:amd64\tii \nlibc6:i386\tun \n"
    assert not_installed(["libc6"], output) == []


@pytest.mark.parametrize("name", ["nginx", "php8.2-fpm", "libstdc++6", "python3-psycopg2", "g++"])
def test_plain_names_are_asked_of_dpkg(name: str) -> None:
    assert PLAIN_NAME.match(name)


@pytest.mark.parametrize("name", ["nginx=1.22*", "libc6:i386", "php*", "/tmp/x.deb", "Nginx", ""])
def test_anything_else_goes_to_apt(name: str) -> None:
    assert not PLAIN_NAME.match(name)
