"""The README's two commands on a fresh clone are the ones CI and the Makefile really use."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_shows_make_run_and_make_test_and_ci_runs_make_test():
    readme = ROOT.joinpath("README.md").read_text()
    block = re.search(r"## Two commands on a fresh clone\s+```(.*?)```", readme, re.S)
    assert block, "README lacks its 'Two commands on a fresh clone' block"
    commands = [line.split("#")[0].strip() for line in block.group(1).strip().splitlines()]
    assert commands == ["make run", "make test"]
    ci = ROOT.joinpath(".ci/run").read_text()
    assert re.search(r"^make test$", ci, re.M)


def test_makefile_defines_both_targets_with_setup():
    makefile = ROOT.joinpath("Makefile").read_text()
    for target in ("run", "test"):
        assert re.search(rf"^{target}: setup$", makefile, re.M), f"Makefile target {target} must depend on setup"
