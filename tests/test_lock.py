"""requirements/lock.txt, the versions behind the README's numbers, pins every distribution that
``pip install -e ".[dev]"`` brings in, so ``pip install -r requirements/lock.txt`` resolves
nothing on its own."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

from conftest import REPO, declared_requirements
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

LOCK = REPO / "requirements" / "lock.txt"
# pip's own toolchain: a new virtual environment brings it and `pip freeze` leaves it out.
TOOLCHAIN = {"pip", "setuptools", "wheel"}


def locked_versions() -> dict[str, str]:
    """Canonical distribution name → pinned version, from the lock's ``name==version`` lines."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(name)] = version.split(";", 1)[0].strip()
    return pins


def requirements_of(name: str, extras: frozenset[str]) -> list[Requirement]:
    """The requirements that apply here with ``extras`` requested: rsvlm's as pyproject.toml
    declares them, another's from its installed metadata."""
    texts = declared_requirements(tuple(extras)) if name == "rsvlm" else distribution(name).requires or []
    wanted = []
    for text in texts:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras | {""}):
            wanted.append(requirement)
    return wanted


def test_the_lock_pins_every_distribution_the_dev_install_needs():
    """Walk the requirements from ``rsvlm[dev]`` through the installed distributions: each one
    reached must be pinned. A distribution installed at another version than its pin (a newer
    release pip took in this environment) is not walked into: its own requirements may not be
    the pinned release's."""
    pins = locked_versions()
    missing: set[str] = set()
    walked: set[tuple[str, frozenset[str]]] = set()
    queue = [("rsvlm", frozenset({"dev"}))]
    while queue:
        name, extras = queue.pop()
        if (name, extras) in walked:
            continue
        walked.add((name, extras))
        for requirement in requirements_of(name, extras):
            child = canonicalize_name(requirement.name)
            if child == "rsvlm":
                queue.append((child, frozenset(requirement.extras)))
                continue
            if child in TOOLCHAIN:
                continue
            if child not in pins:
                missing.add(f"{child} (required by {name})")
                continue
            try:
                installed = distribution(child).version
            except PackageNotFoundError:
                continue
            if installed == pins[child]:
                queue.append((child, frozenset(requirement.extras)))
    assert len(walked) > 50, sorted(walked)
    assert not missing, sorted(missing)
