"""The conda environments can run their rules' scripts (what `--sdm conda` needs on a cluster).

Conda is not available where the tests run, so this checks what can be checked without it:
- every rule declares an env, and the rules in ``envs/core.yaml`` (no PyTorch) import their
  scripts' library modules with torch made unimportable;
- every third-party module the library code of a rule imports (transitively, lazy imports
  included) is pinned in that rule's env file;
- ``requirements.txt`` (pip, local and CI) and the env files pin the same versions.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
RULE = re.compile(r"^rule (\w+):\s*$", re.M)
#: import name -> conda-forge package name (where they differ)
CONDA_NAME = {
    "torch": "pytorch", "cc3d": "connected-components-3d", "skimage": "scikit-image", "yaml": "pyyaml",
    "SimpleITK": "simpleitk", "matplotlib": "matplotlib-base", "mpl_toolkits": "matplotlib-base",
    "PIL": "pillow",
}
#: conda package name -> pip package name (where they differ)
PIP_NAME = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
#: modules a rule may import without a pin of their own: they come with a pinned package
BUNDLED = {
    "snakemake",  # the rule's runner: Snakemake provides the `snakemake` object
    # selma3d.config validates with Snakemake's validator when it is importable, else jsonschema
    "snakemake_interface_common",
}


def rules() -> dict[str, dict[str, str]]:
    """rule name -> {'env': env file, 'script': script path} for every rule with a script."""
    out = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        starts = [m.start() for m in RULE.finditer(text)] + [len(text)]
        for begin, end in zip(starts, starts[1:]):
            block = text[begin:end]
            name = RULE.match(block).group(1)
            env = re.search(r"^\s+conda:\s*\n\s+\"([^\"]+)\"", block, re.M)
            script = re.search(r"^\s+script:\s*\n\s+\"([^\"]+)\"", block, re.M)
            if script is None:
                continue
            out[name] = {
                "env": str((smk.parent / env.group(1)).resolve().relative_to(REPO)) if env else "",
                "script": str((smk.parent / script.group(1)).resolve().relative_to(REPO)),
            }
    return out


def _module_file(name: str) -> Path | None:
    path = SRC.joinpath(*name.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    return None


def _walk_runtime(node: ast.AST):
    """ast.walk, minus ``if TYPE_CHECKING:`` blocks (never executed)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            yield from (n for s in child.orelse for n in _walk_runtime(s))
            continue
        yield from _walk_runtime(child)


def _imports(path: Path, module: str | None) -> list[str]:
    """Every absolute module name imported anywhere in a file (function-level imports too)."""
    names = []
    for node in _walk_runtime(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = module.split(".")
                if path.name != "__init__.py":
                    pkg = pkg[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([node.module] if node.module else []))
            else:
                base = node.module
            names.append(base)
            names += [f"{base}.{a.name}" for a in node.names]  # `from pkg import submodule`
    return names


def closure(script: Path) -> tuple[dict[str, list[str]], set[str]]:
    """Library modules a script reaches (with the chain that reaches each) and third-party roots."""
    chains: dict[str, list[str]] = {}
    third: set[str] = set()
    todo = [(script, None, [script.name])]
    while todo:
        path, module, chain = todo.pop()
        for name in _imports(path, module):
            root = name.split(".")[0]
            if root == "selma3d":
                file = _module_file(name)
                if file is not None and name not in chains:
                    chains[name] = chain + [name]
                    todo.append((file, name, chain + [name]))
            elif root not in sys.stdlib_module_names and root != "__future__":
                third.add(root)
    return chains, third


def env_packages(env_file: Path) -> dict[str, str]:
    """Package -> pinned version of a conda env file (pip: entries included)."""
    out = {}
    for dep in yaml.safe_load(env_file.read_text())["dependencies"]:
        entries = dep["pip"] if isinstance(dep, dict) else [dep]
        for entry in entries:
            m = re.match(r"^([A-Za-z0-9_.\-]+)\s*=?=\s*([^=\s]+)", entry)
            assert m, f"{env_file.name}: {entry!r} is not pinned to a version"
            out[m.group(1).lower()] = m.group(2)
    return out


RULES = rules()
CORE_RULES = sorted(r for r, v in RULES.items() if v["env"] == "envs/core.yaml")


def test_every_rule_with_a_script_has_an_env_file():
    assert RULES, "no rules found"
    missing = [r for r, v in RULES.items() if not v["env"] or not (REPO / v["env"]).exists()]
    assert not missing, f"rules without an existing conda env: {missing}"
    assert "split" in CORE_RULES and "evaluate" in CORE_RULES


BLOCK_TORCH = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'monai', 'einops'):
            raise ImportError(f'{name} is not in envs/core.yaml')
sys.meta_path.insert(0, Block())
sys.path.insert(0, %r)
import importlib
for m in %r:
    importlib.import_module(m)
"""


@pytest.mark.parametrize("rule", CORE_RULES)
def test_core_env_rule_imports_without_torch(rule):
    script = REPO / RULES[rule]["script"]
    chains, _ = closure(script)
    direct = [m for m, c in chains.items() if len(c) == 2]  # what the script itself imports
    res = subprocess.run([sys.executable, "-c", BLOCK_TORCH % (str(SRC), direct)], capture_output=True, text=True)
    if res.returncode != 0:
        torchy = [" -> ".join(c) for m, c in chains.items()
                  if {"torch", "monai", "einops"} & closure_roots(m)]
        pytest.fail(f"rule {rule} (envs/core.yaml) cannot import its library without torch: "
                    f"{res.stderr.strip().splitlines()[-1]}; chains to torch: {torchy}")


def closure_roots(module: str) -> set[str]:
    """Third-party roots imported by one library module itself."""
    file = _module_file(module)
    return {n.split(".")[0] for n in _imports(file, module)} if file else set()


@pytest.mark.parametrize("rule", sorted(RULES))
def test_rule_env_pins_every_third_party_module_its_code_imports(rule):
    env = REPO / RULES[rule]["env"]
    pinned = env_packages(env)
    _, third = closure(REPO / RULES[rule]["script"])
    missing = sorted(m for m in third - BUNDLED if CONDA_NAME.get(m, m).lower() not in pinned)
    assert not missing, f"rule {rule}: {env.name} does not pin {missing} (imported by its library code)"


def test_requirements_and_env_files_pin_the_same_versions():
    req = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if m:
            req[m.group(1).lower().replace("_", "-")] = m.group(2)
    differ = []
    for env in sorted((REPO / "envs").glob("*.yaml")):
        for pkg, version in env_packages(env).items():
            if pkg in ("python", "pip", "cuda-version"):
                continue
            pip = PIP_NAME.get(pkg, pkg).replace("_", "-")
            if pip not in req:
                differ.append(f"{env.name}: {pkg} {version} is not in requirements.txt")
            elif req[pip] != version.split("=")[0]:
                differ.append(f"{env.name}: {pkg}={version}, requirements.txt: {pip}=={req[pip]}")
    assert not differ, "; ".join(differ)
