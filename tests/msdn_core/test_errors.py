"""The error vocabulary: statuses, the README's generated table, the command line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from msdn_core.errors import DESCRIPTIONS, ErrorCode, InvalidBoxes, LimitExceeded, MsdnError, markdown_table

ROOT = Path(__file__).resolve().parents[2]


def test_every_code_has_a_status_and_a_description():
    assert all(code in DESCRIPTIONS and DESCRIPTIONS[code] for code in ErrorCode)
    assert ErrorCode.TOO_MANY_BOXES.status == 413 and ErrorCode.INVALID_BOXES.status == 422
    assert ErrorCode.PACS_TIMEOUT.status == 504 and ErrorCode.SERIES_NOT_FOUND.status == 404
    assert {code.status for code in ErrorCode} <= {401, 404, 405, 406, 408, 409, 413, 422, 431, 500, 502, 503, 504}


def test_errors_carry_enum_codes():
    assert InvalidBoxes("x").code is ErrorCode.INVALID_BOXES and InvalidBoxes("x").status == 422
    err = LimitExceeded("x", code="too_many_boxes")
    assert err.code is ErrorCode.TOO_MANY_BOXES and err.status == 413
    with pytest.raises(ValueError):
        MsdnError("x", code="no_such_code")


def test_readme_table_is_generated_from_the_enum():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"<!-- error-codes:start -->\n(.*?)<!-- error-codes:end -->", text, re.S)
    assert found, "README.md lacks the error-codes block"
    assert found.group(1) == markdown_table(), "regenerate it: python -m msdn_core.errors --markdown"
    rows = [line for line in found.group(1).splitlines() if line.startswith("| 4") or line.startswith("| 5")]
    assert len(rows) == len(ErrorCode)


def test_command_line_prints_the_table():
    done = subprocess.run(
        [sys.executable, "-m", "msdn_core.errors", "--markdown"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout == markdown_table()
    assert "| 413 | `too_many_boxes` |" in done.stdout
