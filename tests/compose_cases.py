"""Compose projects under tests/data/compose/, one per compose feature, and compose's own
verdict on a desired-state listing services of them. Shared by the `validate` unit tests and
the end-to-end tests of the real pass."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data" / "compose"


@dataclass(frozen=True)
class Case:
    name: str  # directory under tests/data/compose
    services: tuple[str, ...]  # what desired-state lists
    valid: bool  # the verdict compose gives (checked against compose itself too)
    files: tuple[str, ...] = ("compose.yml",)
    profiles: tuple[str, ...] = ()
    message: str = ""  # for an invalid case: a fragment the one-line reason must carry
    extra: dict[str, dict[str, str]] = field(default_factory=dict)  # desired-state keys

    @property
    def dir(self) -> Path:
        return DATA / self.name

    def __str__(self) -> str:
        return self.name


CASES = [
    Case("include", ("main", "included"), True),
    Case("include-only", ("included",), True),
    Case("extends", ("svc",), True),
    # the base publishes a host port; the override's !reset drops it, so start-first works
    Case("reset", ("app",), True, files=("compose.yml", "compose.override.yml"),
         extra={"app": {"update": "start-first"}}),
    Case("override", ("app", "extra"), True, files=("compose.yml", "compose.override.yml")),
    Case("profiles", ("app", "tools"), True, profiles=("debug",)),
    Case("profiles", ("app", "tools"), False,
         message="but only under profile 'debug', which is not active"),
    Case("anchors", ("app", "app2"), True),
    Case("var-default", ("app",), True),
    Case("var-required", ("app",), False, message="set GITOPS_TEST_UNSET_IMAGE in .env"),
    Case("multi-document", ("first", "second"), True),
    Case("uppercase", ("serviceB",), True),
    Case("uppercase", ("serviceB", "ghost"), False,
         message="At 'services.ghost': no service 'ghost' in "),
]
IDS = [f"{c.name}-{'+'.join(c.services)}{'-' + ','.join(c.profiles) if c.profiles else ''}"
       for c in CASES]


def compose_verdict(compose_cmd: list[str], case: Case, project_dir: Path) -> bool:
    """Compose's own answer: the project resolves, and lists every desired service."""
    args = [*compose_cmd, "--project-directory", str(project_dir)]
    for f in case.files:
        args += ["--file", str(project_dir / f)]
    for p in case.profiles:
        args += ["--profile", p]
    done = subprocess.run([*args, "config", "--services"], capture_output=True, text=True,
                          check=False, timeout=60)
    return done.returncode == 0 and set(case.services) <= set(done.stdout.split())


def desired_text(case: Case, image: str, digest: str) -> str:
    lines = ["version: 1", "services:"]
    for name in case.services:
        lines += [f"  {name}:", f"    image: {image}", f"    digest: {digest}"]
        lines += [f"    {k}: {v}" for k, v in case.extra.get(name, {}).items()]
    return "\n".join(lines) + "\n"
