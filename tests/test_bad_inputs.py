"""Every malformed or hostile input of the table, fed to the CLI: exit status 2, a message
that names the field, never a traceback. (tests/e2e/test_bad_inputs.py sends the same
table to the real API server.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aistack import cli
from bad_inputs import CASES, Case

CLI_CASES = [c for c in CASES if c.cli is not None]


def test_the_table_is_large_and_ids_are_unique() -> None:
    assert len(CASES) >= 50
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_the_cli_refuses_with_exit_2_naming_the_field(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "input.yaml"
    if case.text is not None:
        path.write_bytes(case.text.encode("utf-8", "surrogateescape"))
    else:
        path.write_text(json.dumps(case.doc))  # JSON is YAML
    code = cli.main([*case.command, str(path)])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_USAGE, f"exit {code}: {err[-500:]}"
    assert case.cli is not None and case.cli in err, err[-1000:]
    assert "Traceback" not in err
    assert out == ""
    assert len(err) < 4000, "the message should be short even for a huge input"
