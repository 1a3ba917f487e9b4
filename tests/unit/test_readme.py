"""The README documents every setting and the two quick-start commands."""

import os
import re

import pytest

from harness.service import ROOT
from settings import SPECS


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        return handle.read()


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.env)
def test_every_setting_has_a_row_in_the_configuration_table(spec):
    assert re.search(rf"^\| `{spec.env}` \| [^|]+ \| .+ \|$", readme(), re.MULTILINE), spec.env


def test_the_quick_start_has_the_two_commands():
    text = readme()
    assert "make run" in text and "make test" in text
