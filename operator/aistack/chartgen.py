"""Write the chart's image settings from the component registry.

    python -m aistack.chartgen            (make chart-images)
    python -m aistack.chartgen --check    (exit 1, naming the stale files)

Each component's default image is an operator setting (``aistack run --<image>-image``) and
a chart value (``images.<image>``). Three places of the chart follow the registry
(``aistack.components.IMAGED``: the parts, then the other model engines), in its order:

- ``values.yaml``: the ``images:`` block, one empty key per component, its comment naming
  the built-in default;
- ``values.schema.json``: ``properties.images`` (a string per key, no other key);
- ``templates/_images.tpl``: the ``--<image>-image`` arguments of the values that are set,
  which ``templates/statefulset.yaml`` includes.

A unit test fails when any of them differs from what this writes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from aistack.components import IMAGED, Component, Engine

Imaged = Component | Engine

CHART = Path(__file__).resolve().parents[2] / "charts" / "aistack-operator"
VALUES = "values.yaml"
SCHEMA = "values.schema.json"
TEMPLATE = "templates/_images.tpl"

#: The ``images:`` block of values.yaml, with the comment above it (up to a blank line).
_VALUES_BLOCK = re.compile(
    r"^# -- Default images [^\n]*\n(?:#[^\n]*\n)*images:\n(?:  [^\n]*\n)*", re.M
)


def values_block(components: tuple[Imaged, ...] = IMAGED) -> str:
    lines = [
        "# -- Default images for stacks that name none (the operator's `--<key>-image`);",
        "# empty: the operator's built-in default. Written by `make chart-images` from the",
        "# component registry.",
        "images:",
    ]
    for c in components:
        lines += [
            f"  # -- Default {c.title} image (built-in: `{c.default_image}`).",
            f'  {c.image}: ""',
        ]
    return "\n".join(lines) + "\n"


def values_yaml(text: str, components: tuple[Imaged, ...] = IMAGED) -> str:
    out, found = _VALUES_BLOCK.subn(lambda _: values_block(components), text, count=1)
    if not found:
        raise ValueError(f"{VALUES}: no '# -- Default images' comment followed by 'images:'")
    return out


def schema_json(text: str, components: tuple[Imaged, ...] = IMAGED) -> str:
    schema = json.loads(text)
    schema["properties"]["images"] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {c.image: {"type": "string"} for c in components},
    }
    return json.dumps(schema, indent=2) + "\n"


def images_template(components: tuple[Imaged, ...] = IMAGED) -> str:
    lines = [
        "{{/* Written by `make chart-images` from the component registry"
        " (operator/aistack/components.py): do not edit. */}}",
        "",
        "{{- /* The operator's --<key>-image argument for each images.<key> that is set. */}}",
        '{{- define "aistack-operator.imageArgs" -}}',
    ]
    for c in components:
        lines += [
            f"{{{{- with .Values.images.{c.image} }}}}",
            f"- --{c.image}-image={{{{ . }}}}",
            "{{- end }}",
        ]
    lines.append("{{- end }}")
    return "\n".join(lines) + "\n"


def generated(chart: Path = CHART) -> dict[str, str]:
    """Each generated file of the chart, relative to it, with the text it should have."""
    return {
        VALUES: values_yaml((chart / VALUES).read_text()),
        SCHEMA: schema_json((chart / SCHEMA).read_text()),
        TEMPLATE: images_template(),
    }


def stale(chart: Path = CHART) -> list[str]:
    out = []
    for rel, text in generated(chart).items():
        path = chart / rel
        if not path.exists() or path.read_text() != text:
            out.append(rel)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aistack.chartgen", description=__doc__)
    parser.add_argument("--chart", type=Path, default=CHART, help="the chart's directory")
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args(argv)
    if args.check:
        old = stale(args.chart)
        for rel in old:
            print(f"{args.chart / rel}: stale; run `make chart-images`", file=sys.stderr)
        return 1 if old else 0
    for rel, text in generated(args.chart).items():
        (args.chart / rel).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
