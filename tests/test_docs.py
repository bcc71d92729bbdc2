"""The documentation's examples run, and the CLI reference matches --help."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SAMPLE
from geoseg.models.demo import DEMO_MODEL
from geoseg.cli import main

DEMO = DEMO_MODEL
needs_demo = pytest.mark.skipif(not DEMO.exists(), reason="geoseg/models/demo_model.pt is missing")


def blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("docs")
    shutil.copytree(SAMPLE, d / "sample_data")
    return d


def run_geoseg_lines(text: str, cwd: Path) -> list[str]:
    ran = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("geoseg "):
            continue
        old = os.getcwd()
        os.chdir(cwd)
        try:
            main(shlex.split(line)[1:] + ["-q"] if line.split()[1] in ("infer", "vectorize", "train") else
                 shlex.split(line)[1:])
        except SystemExit as e:
            assert not e.code, f"{line!r} exited {e.code}"
        finally:
            os.chdir(old)
        ran.append(line)
    return ran


@needs_demo
def test_quickstart_commands(scratch):
    ran = []
    for b in blocks(ROOT / "docs" / "quickstart.md", "bash"):
        ran += run_geoseg_lines(b, scratch)
    assert len(ran) >= 5
    out = scratch / "out"
    for name in ("field_classes.tif", "field_probabilities.tif", "field_polygons.gpkg", "field_preview.png",
                 "field.geojson", "my_model.pt"):
        assert (out / name).exists(), name


@needs_demo
def test_readme_first_command_and_python(scratch):
    readme = (ROOT / "README.md").read_text()
    first = blocks(ROOT / "README.md", "bash")[0]
    cmd = first.split("&&")[-1].strip().replace(".venv/bin/geoseg", "geoseg")
    d = scratch / "readme"
    shutil.copytree(SAMPLE, d / "sample_data")
    run_geoseg_lines(cmd, d)
    assert (d / "out" / "field_classes.tif").exists() and (d / "out" / "field_preview.png").exists()
    old = os.getcwd()
    os.chdir(d)
    try:
        for code in blocks(ROOT / "README.md", "python"):
            exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(old)
    assert "pytest" in readme


@needs_demo
def test_python_api_examples(scratch):
    d = scratch / "py"
    shutil.copytree(SAMPLE, d / "sample_data")
    (d / "out").mkdir()
    old = os.getcwd()
    os.chdir(d)
    try:
        codes = blocks(ROOT / "docs" / "python.md", "python")
        assert len(codes) >= 5
        for i, code in enumerate(codes):
            if "LocalCluster" in code:  # as a user runs it: saved as a script (its workers import it again)
                script = d / f"block{i}.py"
                script.write_text(code, encoding="utf-8")
                env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
                r = subprocess.run([sys.executable, str(script)], cwd=d, env=env, capture_output=True, text=True,
                                   timeout=300)
                assert r.returncode == 0, f"docs/python.md block {i} as a script:\n{r.stderr[-2000:]}"
            else:
                exec(compile(code, f"docs/python.md block {i}", "exec"), {"__name__": "__main__"})
    finally:
        os.chdir(old)
    assert (d / "out" / "field_polygons.gpkg").exists() and (d / "out" / "field_preview.png").exists()


def test_cli_reference_matches_help():
    sys.path.insert(0, str(ROOT / "docs"))
    from make_cli_docs import render

    assert (ROOT / "docs" / "cli.md").read_text() == render(), \
        "docs/cli.md is stale: run python docs/make_cli_docs.py"


def test_help_is_fast_and_torch_free():
    code = ("import sys, time; t = time.perf_counter(); from geoseg.cli import main\n"
            "for cmd in (['--help'], ['infer', '--help'], ['train', '--help'], ['vectorize', '--help']):\n"
            "    try:\n        main(cmd)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules and 'torchgeo' not in sys.modules\n"
            "print(time.perf_counter() - t)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_troubleshooting_messages_exist_in_code():
    """The page quotes messages as the CLI shows them: the library's marked parameter names as flags."""
    from geoseg.errors import for_cli

    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    rows = [ln for ln in page.splitlines() if ln.startswith("| `")]
    fragments = [f for ln in rows for f in re.findall(r"`([^`]+)`", ln.split("|")[1])]
    assert len(fragments) >= 40
    source = for_cli("\n".join(p.read_text() for p in (ROOT / "geoseg").rglob("*.py")))
    missing = [f for f in fragments if f not in source]
    assert not missing, f"documented messages not found in the code: {missing}"


def test_models_page_lists_the_architecture_table():
    """docs/models.md shows every architecture of the table with its summary, defaults and size multiple."""
    from geoseg.architectures import ARCHITECTURES

    text = (ROOT / "docs" / "models.md").read_text()
    for a in ARCHITECTURES.values():
        defaults = ", ".join(f"{k}={v}" for k, v in a.defaults.items() if k != "encoder_weights")
        row = f"| `{a.name}` | {a.summary} | {defaults} | {a.size_multiple()} |"
        assert row in text, row
    rows = [ln for ln in text.splitlines() if ln.startswith("| `")]
    assert len([r for r in rows if r.split("`")[1] in ARCHITECTURES]) == len(ARCHITECTURES)
