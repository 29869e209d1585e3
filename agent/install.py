"""What scripts/install writes, printed from the installed package (no reconcile imports).

    python -m agent.install unit                      the systemd unit
    python -m agent.install example-config            the example agent.toml
    python -m agent.install drop-in --config PATH     ReadWritePaths= for compose.project_dir

The unit is ProtectSystem=strict and compose.from_repo writes project_dir, so the drop-in
opens exactly that directory for writing.
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path

from agent.config import load_config, read_toml
from agent.errors import ConfigError

UNIT_NAME = "gitops-agent.service"
EXAMPLE_CONFIG = "agent.toml.example"


def unit_text() -> str:
    return files("agent.data").joinpath(UNIT_NAME).read_text(encoding="utf-8")


def example_config_text() -> str:
    return files("agent.data").joinpath(EXAMPLE_CONFIG).read_text(encoding="utf-8")


def drop_in_text(*project_dirs: Path) -> str:
    """The drop-in paths.conf: ReadWritePaths= for each project_dir (quoted: it may hold
    spaces); several with [[stack]] tables."""
    lines = []
    for project_dir in project_dirs:
        path = str(project_dir)
        if any(c in path for c in '"\\\n'):
            raise ConfigError("compose.project_dir", [f"cannot be put in a unit file: {path!r}"])
        lines.append(f'ReadWritePaths="{path}"\n')
    return (
        "# ReadWritePaths for compose.project_dir (python -m agent.install drop-in):\n"
        "# print it again after changing that.\n"
        "[Service]\n" + "".join(lines)
    )


def drop_in_for_config(config: Path) -> str:
    data = read_toml(config)
    if "stack" not in data:
        return drop_in_text(load_config(config).compose.project_dir)
    # [[stack]] tables: every stack's project_dir (the whole file is checked by check-config)
    dirs = []
    for i, st in enumerate(data["stack"] if isinstance(data["stack"], list) else []):
        pdir = st.get("compose", {}).get("project_dir") if isinstance(st, dict) else None
        if not isinstance(pdir, str):
            raise ConfigError(str(config), [f"stack[{i}].compose.project_dir: required"])
        p = Path(pdir).expanduser()
        dirs.append(p if p.is_absolute() else (config.parent / p).resolve())
    return drop_in_text(*dirs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m agent.install")
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("unit")
    sub.add_parser("example-config")
    d = sub.add_parser("drop-in")
    d.add_argument("--config", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        if args.what == "unit":
            out = unit_text()
        elif args.what == "example-config":
            out = example_config_text()
        else:
            out = drop_in_for_config(args.config)
    except ConfigError as e:
        print(f"gitops-agent: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
