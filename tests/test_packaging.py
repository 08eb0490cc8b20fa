"""Packaging: every third-party import is declared, the stage installs without the study's
extras, the layout has no import cycle and the stage never imports the study, and the shipped
heads travel with a non-editable install (package data, ``bh_stage/data/heads``)."""

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
    """(runtime, every extra) sets of normalised distribution names from setup.cfg."""
    cp = configparser.ConfigParser()
    cp.read(REPO / "setup.cfg")
    extras = set()
    for _, value in cp.items("options.extras_require"):
        extras |= _names(value)
    return _names(cp.get("options", "install_requires")), extras


def _third_party_imports(folder):
    """Top-level module -> first 'file:line' importing it, for every .py file in folder."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
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


@pytest.mark.parametrize("folder", ["bh_stage", "tests"])
def test_every_import_is_declared(folder):
    """Regression: scipy was imported by evaluate.py and train.py but declared nowhere, so a
    fresh `pip install -e ".[test]"` failed 13 tests. The package imports an extra's
    modules only through ``extras.require`` (which names the extra), so every plain import in
    it must be a runtime requirement; tests may use every extra."""
    runtime, extras = _declared()
    allowed = runtime | (extras if folder == "tests" else set())
    providers = importlib.metadata.packages_distributions()
    missing = []
    for module, where in _third_party_imports(REPO / folder).items():
        dists = {_norm(d) for d in providers.get(module, [module])}
        if ALIASES.get(module):
            dists.add(ALIASES[module])
        if not dists & allowed:
            missing.append(f"{module} ({where})")
    assert not missing, f"imported but not declared in setup.cfg: {', '.join(missing)}"


def _setup_extras():
    cp = configparser.ConfigParser()
    cp.read(REPO / "setup.cfg")
    return {name: _names(value) for name, value in cp.items("options.extras_require")}


def test_extras_module_matches_setup_cfg():
    """Each module ``extras.EXTRAS`` names is provided by a distribution of that extra in
    setup.cfg and by none of the base requirements (else `pip install .` would bring it)."""
    from bh_stage.extras import EXTRAS

    runtime = _declared()[0]
    setup = _setup_extras()
    providers = importlib.metadata.packages_distributions()
    for extra, modules in EXTRAS.items():
        for module in modules:
            dists = {_norm(d) for d in providers.get(module, [module])}
            dists |= {ALIASES[module]} if module in ALIASES else set()
            assert dists & setup[extra], (extra, module)
            assert not dists & runtime, (extra, module)
    assert {"study", "paper", "dask", "ceci", "docs", "test"} <= set(setup)


def _module_graph():
    """Module -> set of bh_stage modules it imports (any depth in the file), dotted names."""
    graph = {}
    for path in sorted((REPO / "bh_stage").rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = name if rel.name == "__init__" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("bh_stage"):
                    subs = [f"{target}.{a.name}" for a in node.names]
                    deps |= {t for t in subs + [target]}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("bh_stage")}
        graph[name] = deps
    modules = set(graph)
    return {m: {d for d in deps if d in modules and d != m} for m, deps in graph.items()}


def test_stage_never_imports_the_study():
    """The stage (every module outside bh_stage.study) imports nothing from the study."""
    bad = {m: sorted(d for d in deps if d.startswith("bh_stage.study"))
           for m, deps in _module_graph().items() if not m.startswith("bh_stage.study")}
    assert not {m: d for m, d in bad.items() if d}


def test_no_import_cycle():
    """No module reaches itself through imports, lazy ones (inside functions) included;
    package ``__init__`` modules import nothing of their own subpackage here."""
    graph = _module_graph()
    state = {}

    def visit(m, path):
        state[m] = "open"
        for d in graph[m]:
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(path + [m, d]))
            if d not in state:
                visit(d, path + [m])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_module_graph_sees_imports():
    """The graph the two tests above read finds known imports (a guard against a parser
    that sees none)."""
    graph = _module_graph()
    assert "bh_stage.stage" in graph["bh_stage.cli"]
    assert "bh_stage.nets.compact" in graph["bh_stage.tilehead"]
    assert "bh_stage.study.tileset" in graph["bh_stage.study.train_tile"]


def test_study_command_without_its_extra_names_it(tmp_path):
    """A study command without galsim stops with exit 2 and one line naming the extra."""
    code = ("import sys; sys.modules['galsim'] = None; from bh_stage.cli import main; "
            "sys.exit(main(['simulate', 'x.yml']))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True,
                         capture_output=True)
    assert out.returncode == 2
    assert out.stderr.strip() == ("bh-stage simulate: error: galsim not installed; this "
                                  "command needs the extra [study]: pip install "
                                  "'bh-stage[study]'")


def test_optional_bench_tool_names_its_extra(tmp_path):
    """NNCF stays optional: without it the int8 bench stops with one line naming the extra."""
    # the script's folder on sys.path first, as `python bench/bench_int8.py` has it (benchlib)
    code = (f"import runpy, sys; sys.path.insert(0, {str(REPO / 'bench')!r}); "
            "sys.modules['nncf'] = None; "
            "sys.argv = ['bench_int8.py', '--dataset', 'x.h5', '--realistic', 'y.h5']; "
            f"runpy.run_path({str(REPO / 'bench' / 'bench_int8.py')!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, text=True,
                         capture_output=True)
    assert out.returncode == 1
    assert out.stderr.strip() == ('bench_int8.py needs NNCF, an optional extra: '
                                  'pip install -e ".[bench]"')


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
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(tmp / "dist"), str(src)], check=True)
    (path,) = (tmp / "dist").glob("bh_stage-*.whl")
    return path


def test_wheel_ships_every_head(wheel):
    """Regression: HEADS_DIR pointed at <repo>/data/heads only, so a wheel had no head. Every
    file of the checkout's heads folder is package data of the wheel, and nothing else."""
    from bh_stage.heads import HEADS_DIR

    with zipfile.ZipFile(wheel) as z:
        names = {n for n in z.namelist() if n.startswith("bh_stage/data/heads/")}
    shipped = {f"bh_stage/data/heads/{p.name}" for p in HEADS_DIR.iterdir()}
    assert shipped and names == shipped


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
    from bh_stage import heads, tilehead

    code = ("from bh_stage import heads, tilehead; print(heads.__file__); "
            "print(heads.head_path('default', noise_sigma_adu=14.5)); "
            "print(tilehead.tile_head_path('default'))")
    out = subprocess.run([str(python), "-c", code], cwd=tmp_path, check=True, text=True,
                         capture_output=True, env={"PATH": "/usr/bin:/bin"})
    module, head, tile_head = out.stdout.split()
    assert module.startswith(site)
    installed = Path(site) / "bh_stage" / "data" / "heads"
    assert head == str(installed / heads.head_path("default", noise_sigma_adu=14.5).name)
    assert tile_head == str(installed / tilehead.tile_head_path("default").name)
