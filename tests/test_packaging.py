"""The package as installed: a quiet import, the console scripts, one version string, the CI
running the README's test command, and the Multi30k tests failing rather than skipping in CI."""

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import helpers
from helpers import REPO

CONSOLE_SCRIPTS = {
    "m3p-binarize": "preprocess.binarize:main",
    "m3p-extract-features": "preprocess.extract_image_features:main",
    "m3p-subsample": "preprocess.subsample:main",
    "m3p-evaluate": "m3p_fairseq.evaluation.cli:main",
    "m3p-figures": "m3p_fairseq.evaluation.figures_cli:main",
    "m3p-sweep": "m3p_fairseq.sweep.cli:main",
    "m3p-repair-checkpoints": "m3p_fairseq.checkpoints:main",
    "m3p-mla": "m3p_fairseq.mla.cli:main",
}


def installed_from_this_checkout():
    """m3p-fairseq's installed metadata, if it was installed from this checkout (as
    scripts/install.sh does); tests of the installed metadata need it."""
    try:
        distribution = importlib.metadata.distribution("m3p-fairseq")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("m3p-fairseq is not pip-installed here (bash scripts/install.sh installs it)")
    source = json.loads(distribution.read_text("direct_url.json") or "{}").get("url", "")
    if source.removeprefix("file://") != str(REPO):
        pytest.skip(f"m3p-fairseq is installed from {source or 'an index'}, not from this checkout")
    return distribution


@pytest.mark.parametrize("module", ["m3p_fairseq", "preprocess.binarize", "preprocess.subsample",
                                    "m3p_fairseq.evaluation.figures_cli"])
def test_importing_prints_nothing(module):
    # fairseq's import sets the root logger to DEBUG; h5py, matplotlib and PIL log at import
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")


def test_one_version_string():
    import m3p_fairseq
    from m3p_fairseq.version import __version__

    assert m3p_fairseq.__version__ == __version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)
    assert importlib.metadata.version("m3p-fairseq") == installed_from_this_checkout().version == __version__


def test_console_scripts_are_installed_and_answer_help(capsys):
    distribution = installed_from_this_checkout()
    declared = {ep.name: ep.value for ep in distribution.entry_points if ep.group == "console_scripts"}
    assert declared == CONSOLE_SCRIPTS
    for name, entry_point in sorted(declared.items()):
        module, _, function = entry_point.partition(":")
        main = getattr(__import__(module, fromlist=[function]), function)
        with pytest.raises(SystemExit) as stopped:
            main(["--help"])
        assert stopped.value.code == 0, name
        assert "usage:" in capsys.readouterr().out, name
    # and one of them as a program on PATH, as a user types it
    script = Path(sys.executable).parent / "m3p-subsample"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--fraction" in result.stdout, result.stderr


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    set_up = readme[readme.index("## Set up"):].split("\n## ", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in set_up.splitlines() if "scripts/install.sh &&" in line]
    assert len(commands) == 2  # the quickstart and the tests
    test_command = next(c for c in commands if "pytest" in c)
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert any(line.startswith(test_command + " ") or line == test_command for line in ci.splitlines())
    assert "python3 -m venv" in ci and "ruff check" in ci


def test_multi30k_tests_fail_under_ci_and_skip_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setattr(helpers, "MULTI30K_CANDIDATES", [tmp_path / "nowhere"])
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no Multi30k copy .*nowhere.*CI=true"):
        helpers.multi30k_dir()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no Multi30k copy"):
        helpers.multi30k_dir()
    (tmp_path / "copy" / "raw").mkdir(parents=True)
    monkeypatch.setattr(helpers, "MULTI30K_CANDIDATES", [tmp_path / "nowhere", tmp_path / "copy"])
    monkeypatch.setenv("CI", "true")
    assert helpers.multi30k_dir() == tmp_path / "copy"


def test_no_module_puts_a_folder_on_sys_path():
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    offenders = [name for name in tracked.stdout.split()
                 if name != "tests/test_packaging.py" and "sys.path.insert" in (REPO / name).read_text(encoding="utf-8")]
    assert offenders == []  # preprocess and m3p_fairseq are found as installed packages
