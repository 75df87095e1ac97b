"""pyproject.toml's lower bounds admit no release with a published advisory, and the lock files
pin releases that satisfy pyproject.toml.

A lower bound is what ``pip install aftercare`` without the lock may choose: ``jinja2>=3.1.4``
let a fresh install pick 3.1.4 or 3.1.5, both with sandbox breakouts. Each floor below is the
first release clear of the advisories named beside it; a dependency's dependency with advisories
is listed in pyproject.toml for its floor alone.
"""

from __future__ import annotations

import tomllib
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO

# package -> (first safe release, the advisories fixed by then)
FLOORS: dict[str, tuple[str, str]] = {
    "jinja2": ("3.1.6", "CVE-2024-56201, CVE-2024-56326, CVE-2025-27516: sandbox breakouts"),
    "python-multipart": (
        "0.0.31",
        "CVE-2024-53981 (boundary DoS, 0.0.18), CVE-2026-24486 (file write, 0.0.22), "
        "GHSA-mj87-hwqh-73pj and GHSA-pp6c-gr5w-3c5g (preamble and header DoS, 0.0.26/27), "
        "GHSA-5rvq-cxj2-64vf, GHSA-6jv3-5f52-599m, GHSA-vffw-93wf-4j4q (query string DoS and "
        "parameter smuggling, 0.0.30), GHSA-v9pg-7xvm-68hf (negative Content-Length, 0.0.31)",
    ),
    "starlette": (
        "1.3.1",
        "CVE-2025-62727 (Range DoS), CVE-2026-48710 (Host header path bypass), "
        "CVE-2026-48817, CVE-2026-54282, CVE-2026-54283 (urlencoded form limits ignored)",
    ),
    "h11": ("0.16.0", "CVE-2025-43859: chunked-encoding request smuggling"),
    "urllib3": (
        "2.7.0",
        "CVE-2025-66418, CVE-2025-66471, CVE-2026-21441 (decompression bombs), CVE-2026-44431 "
        "(headers leaked across origins on proxied redirects), CVE-2026-44432",
    ),
    "requests": ("2.33.0", "CVE-2024-47081 (.netrc leak), CVE-2026-25645 (temp file reuse)"),
    "aiohttp": (
        "3.14.3",
        "CVE-2026-34993, CVE-2026-47265, CVE-2026-59881, CVE-2026-69243 (WebSocket upgrade "
        "smuggling), CVE-2026-69244 (response parser over-read)",
    ),
    "idna": ("3.15", "CVE-2026-45409: quadratic-time encode"),
    "aiosmtpd": ("1.4.6", "CVE-2024-27305, CVE-2024-34083: SMTP smuggling (tests only)"),
}


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements() -> dict[str, Requirement]:
    project = _pyproject()["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    reqs = [Requirement(line) for line in lines]
    return {canonicalize_name(r.name): r for r in reqs}


def _locked(name: str) -> dict[str, Version]:
    out = {}
    for line in (REPO / name).read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            package, version = line.split(";")[0].split("==")
            out[canonicalize_name(package.strip())] = Version(version.strip())
    return out


def _lower_bound(req: Requirement) -> Version | None:
    """The least version ``req`` admits by its ``>=``/``==``/``~=`` clauses (None: no floor)."""
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    bounds += [Version(s.version) for s in req.specifier if s.operator == ">"]
    return max(bounds) if bounds else None


@pytest.mark.parametrize("package", sorted(FLOORS))
def test_pyproject_refuses_every_release_with_a_known_advisory(package: str) -> None:
    safe, advisories = FLOORS[package]
    req = _requirements().get(canonicalize_name(package))
    assert req is not None, f"{package} needs a floor in pyproject.toml ({advisories})"
    floor = _lower_bound(req)
    assert floor is not None, f"{req} has no lower bound ({advisories})"
    assert floor >= Version(safe), f"{req} admits releases before {safe}: {advisories}"


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_the_lock_files_pin_safe_releases_that_satisfy_pyproject(lock: str) -> None:
    pinned = _locked(lock)
    for package, (safe, advisories) in FLOORS.items():
        name = canonicalize_name(package)
        if name in pinned:
            assert pinned[name] >= Version(safe), f"{lock}: {package} {pinned[name]}: {advisories}"
        else:
            assert lock == "requirements.lock", f"{package} missing from {lock}"
    for name, req in _requirements().items():
        if name in pinned:
            assert req.specifier.contains(pinned[name], prereleases=True), (lock, str(req))
    assert canonicalize_name("jinja2") in pinned  # the file was read


@pytest.mark.parametrize(
    ("line", "refused"),
    [
        ("jinja2>=3.1.4", True),
        ("jinja2>=3.1.5", True),
        ("jinja2", True),
        ("jinja2<4", True),
        ("jinja2>=3.1.6", False),
        ("python-multipart>=0.0.18", True),
        ("python-multipart>=0.0.9", True),
        ("python-multipart>=0.0.31", False),
    ],
)
def test_the_floor_check_refuses_the_bounds_that_were_there(line: str, refused: bool) -> None:
    req = Requirement(line)
    safe, _ = FLOORS[canonicalize_name(req.name)]
    floor = _lower_bound(req)
    assert (floor is None or floor < Version(safe)) is refused
