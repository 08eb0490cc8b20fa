"""Packaging: every third-party import is declared, and the shipped heads travel with a
non-editable install (wheel data files under ``share/bh-stage/heads``)."""

import ast
import configparser
import importlib.metadata
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

ALIASES = {"keras": "tensorflow", "distributed": "dask"}
"""Modules whose distribution comes with a declared one (keras with tensorflow>=2.16)."""


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(text):
    """Normalised distribution names of a setup.cfg requirement list."""
    return {_norm(m.group(1)) for line in text.splitlines()
            if (m := re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line))}


def _declared():
    """(runtime, test) sets of normalised distribution names from setup.cfg."""
    cp = configparser.ConfigParser()
    cp.read(REPO / "setup.cfg")
    return (_names(cp.get("options", "install_requires")),
            _names(cp.get("options.extras_require", "test")))


def _third_party_imports(folder):
    """Top-level module -> first 'file:line' importing it, for every .py file in folder."""
    found = {}
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("bh_stage", "conftest"):
                    found.setdefault(top, f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def _declared_extra(name):
    cp = configparser.ConfigParser()
    cp.read(REPO / "setup.cfg")
    return cp.get("options.extras_require", name)


@pytest.mark.parametrize("folder", ["bh_stage", "tests"])
def test_every_import_is_declared(folder):
    """Regression: scipy was imported by evaluate.py and train.py but declared nowhere, so a
    fresh `pip install -e ".[test]"` failed 13 tests."""
    runtime, test = _declared()
    # ceci: the extra of bh_stage/ceci_stage.py (which names it when missing) and its test
    allowed = runtime | _names(_declared_extra("ceci")) | (test if folder == "tests" else set())
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, where in _third_party_imports(REPO / folder).items():
        dists = {_norm(d) for d in providers.get(module, [module])}
        if ALIASES.get(module):
            dists.add(ALIASES[module])
        if not dists & allowed:
            missing.append(f"{module} ({where})")
    assert not missing, f"imported but not declared in setup.cfg: {', '.join(missing)}"


def test_scikit_learn_is_declared():
    assert "scikit-learn" in _declared()[0]


def test_optional_bench_tool_names_its_extra(tmp_path):
    """NNCF stays optional: without it the int8 bench stops with one line naming the extra."""
    code = ("import runpy, sys; sys.modules['nncf'] = None; "
            "sys.argv = ['bench_int8.py', '--dataset', 'x.h5', '--realistic', 'y.h5']; "
            f"runpy.run_path({str(REPO / 'bench' / 'bench_int8.py')!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True,
                         capture_output=True)
    assert out.returncode == 1
    assert out.stderr.strip() == ('bench_int8.py needs NNCF, an optional extra: '
                                  'pip install -e ".[bench]"')
    assert "nncf" in _declared_extra("bench")


def test_ceci_is_an_optional_extra(tmp_path):
    """Without ceci, bh_stage and its CLI import, and bh_stage.ceci_stage (or python -m
    bh_stage) stops with one line naming the extra."""
    block = "import sys; sys.modules['ceci'] = None; "
    out = subprocess.run([sys.executable, "-c", block + "import bh_stage.cli, bh_stage.stage"],
                         cwd=tmp_path, text=True, capture_output=True)
    assert out.returncode == 0, out.stderr
    code = block + "from bh_stage.__main__ import main; sys.exit(main())"
    out = subprocess.run([sys.executable, "-c", code, "BlendHunterStage"], cwd=tmp_path,
                         text=True, capture_output=True)
    assert out.returncode == 2
    assert out.stderr.strip() == ('bh_stage BlendHunterStage: error: bh_stage.ceci_stage needs '
                                  'ceci, an optional extra: pip install -e ".[ceci]"')
    assert "ceci" in _names(_declared_extra("ceci"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel of a copy of the project, built offline with the installed setuptools."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "bh_stage", src / "bh_stage",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "data" / "heads", src / "data" / "heads")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(tmp / "dist"), str(src)], check=True)
    (path,) = (tmp / "dist").glob("bh_stage-*.whl")
    return path


def test_wheel_ships_every_head(wheel):
    """Regression: HEADS_DIR pointed at <repo>/data/heads only, so a wheel had no head."""
    with zipfile.ZipFile(wheel) as z:
        names = {n.split("/data/", 1)[1] for n in z.namelist() if ".data/data/" in n}
    shipped = {f"share/bh-stage/heads/{p.name}" for p in (REPO / "data" / "heads").iterdir()}
    assert len(shipped) == 20 and names == shipped  # 7 VGG16, 1 compact, 2 tile heads


def test_installed_package_resolves_default_head(wheel, tmp_path):
    """`head: default` resolves from a non-editable install, away from the checkout: the
    wheel goes into a new virtual environment (not `pip install --prefix`, which would
    uninstall the project from the running one), which borrows this one's dependencies."""
    import venv

    env = tmp_path / "venv"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                    "--no-deps", "--no-index", "-q", str(wheel)], check=True)
    site = sysconfig.get_paths(vars={"base": str(env), "platbase": str(env)})["purelib"]
    # this environment's packages after the new one's; its .pth files (the editable
    # install of the checkout) are not run
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    code = ("from bh_stage import model, tilehead; print(model.__file__); "
            "print(model.head_path('default', noise_sigma_adu=14.5)); "
            "print(tilehead.tile_head_path('default'))")
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, check=True, text=True,
                         capture_output=True, env={"PATH": "/usr/bin:/bin"})
    module, head, tile_head = out.stdout.split()
    assert module.startswith(site)
    heads = (env / "share" / "bh-stage" / "heads").resolve()
    assert head == str(heads / "compact_paper_sigma15.json")
    assert tile_head == str(heads / "tile_unrecognised.json")
