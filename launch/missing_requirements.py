"""Which of ferjax's requirements an offline machine needs brought to it (for offline_wheels.sh).

    python launch/missing_requirements.py REPORT.json HAVE.txt

REPORT.json is `pip install --dry-run --report` of ferjax with its test extra (every package
a fresh install takes, with versions); HAVE.txt is `pip list --format=freeze` of the offline
machine (NAME==VERSION per line; a bare NAME counts as good enough). Prints one
`NAME==VERSION` per package to fetch: those the machine lacks, and those of ferjax's own
requirements that it has at a version ferjax does not accept (marked `# replaces VERSION`).
Indirect requirements the machine has are kept at whatever version it has.
"""

from __future__ import annotations

import json
import re
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as normal
from packaging.version import InvalidVersion, Version


def parse_have(lines) -> dict[str, str | None]:
    """`pip list --format=freeze` lines -> {name: version or None}."""
    have = {}
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            have[normal(re.split(r"[<>@ ]", name.strip(), maxsplit=1)[0])] = (
                version.strip() or None)
    return have


def to_fetch(report: dict, have: dict[str, str | None]) -> list[str]:
    """The `NAME==VERSION[  # replaces V]` lines for the packages to bring."""
    install = [item["metadata"] for item in report["install"]]
    ferjax = next(meta for meta in install if normal(meta["name"]) == "ferjax")
    wanted = {}
    for text in ferjax.get("requires_dist", []):
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": "test"}):
            wanted[normal(requirement.name)] = requirement

    def acceptable(name: str, version: str | None) -> bool:
        if version is None or name not in wanted:
            return True
        try:
            return wanted[name].specifier.contains(Version(version), prereleases=True)
        except InvalidVersion:
            return True

    lines = []
    for meta in install:
        name = normal(meta["name"])
        if name == "ferjax" or (name in have and acceptable(name, have[name])):
            continue
        note = f"  # replaces {have[name]}" if name in have else ""
        lines.append(f"{meta['name']}=={meta['version']}{note}")
    return lines


if __name__ == "__main__":
    with open(sys.argv[1]) as report, open(sys.argv[2]) as have:
        print("\n".join(to_fetch(json.load(report), parse_have(have))))
