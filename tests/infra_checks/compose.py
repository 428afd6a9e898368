"""infra/docker-compose.yml and the `${VAR}` interpolation compose applies to it."""

from __future__ import annotations

import re

import yaml

from infra_checks.layout import COMPOSE


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR} with no variable set; `$$` is a literal `$`."""
    value = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)
    value = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", "", value)
    return value.replace("$$", "$")


def unescaped_dollars(value: str) -> list[str]:
    """`$` that compose would interpolate although a literal `$` was meant."""
    stripped = re.sub(r"\$\$|\$\{[A-Za-z_][A-Za-z0-9_]*(:?-[^}]*)?\}", "", value)
    return re.findall(r"\$[^\s$]*", stripped)
