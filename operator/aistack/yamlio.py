"""YAML output that people read: no anchors, multi-line strings as literal blocks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


# libyaml's emitter when PyYAML has it (the wheels do): the same output, many times faster
# for `aistack render` of hundreds of stacks.
class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    def ignore_aliases(self, data: Any) -> bool:
        # Repeated sub-trees (label sets, enums) are written out in full.
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        # Trailing spaces on a line make PyYAML fall back to quoting; that is fine too.
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def dump(obj: Any) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def dump_all(objs: Iterable[Any]) -> str:
    """Multi-document YAML, each document introduced by ``---``."""
    return "".join("---\n" + dump(obj) for obj in objs)
