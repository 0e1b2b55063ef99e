"""Notebooks are stored without outputs, with the standard kernel, and follow the chapter template.

Every notebook: no stored outputs, kernelspec python3, cell ids (nbformat 4.5), imports minq, seeds its
RNG, ends with exercises. The notebooks listed in TEMPLATE also follow notebooks/README.md as far as a
test can tell: the title, the seed quoted early, the fixed headings in order, stubs (never solutions)
after the Exercises heading, no text about anything outside the repository or about how the chapter
was made, and the worked solutions and answer key in notebooks/solutions/.
"""

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))

# The chapters written so far; later ones (08_kquants, ...) are checked by the tests below as soon as they exist.
REQUIRED = ("01_float_formats.ipynb", "02_scale_zero_point.ipynb", "03_group_quantization.ipynb",
            "04_ptq.ipynb", "06_gptq.ipynb", "07_awq.ipynb")

# The notebooks that follow the chapter template of notebooks/README.md (every chapter, once converted).
TEMPLATE = ("01_float_formats.ipynb", "02_scale_zero_point.ipynb", "03_group_quantization.ipynb", "04_ptq.ipynb",
            "05_qat.ipynb", "06_gptq.ipynb", "07_awq.ipynb", "08_kquants.ipynb", "09_kv_cache.ipynb",
            "10_fp8_and_block_formats.ipynb", "11_ternary.ipynb", "12_rotations_and_hqq.ipynb")

# The fixed headings of the template, in this order.
VERDICT = "## The seed's claims, measured"
SUMMARY = "## Summary"
EXERCISES = "## Exercises"

# Text a learner must not meet: places outside the repository, notes on how the chapter was made.
LEAKS = [(re.compile(p, re.I), why) for p, why in [
    (r"shared/reference", "a link to notes outside the repository"),
    (r"(?<![\w.])/(work|tmp|home|Users|mnt)/", "an absolute path of some machine"),
    (r"\bsession('s)?\b", "a note about how the chapter was made"),
]]


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _src(cell):
    return "".join(cell["source"])


def _heading_index(cells, heading):
    for i, c in enumerate(cells):
        if c["cell_type"] == "markdown" and re.search(rf"^{re.escape(heading)}\s*$", _src(c), re.M):
            return i
    return None


def test_chapter_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    for want in REQUIRED:
        assert want in names, f"missing notebook {want}"
    for name in TEMPLATE:
        assert name in names, f"TEMPLATE lists {name}, which does not exist"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert nb["metadata"].get("kernelspec", {}).get("name") == "python3", "kernelspec must be 'python3'"
    assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5), "nbformat 4.5 (cells carry ids)"
    ids = [cell.get("id") for cell in nb["cells"]]
    assert all(ids) and len(set(ids)) == len(ids), "every cell has a unique id"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        assert cell.get("outputs") == [], f"{path.name} cell {i} has stored outputs: strip them"
        assert cell.get("execution_count") is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_seeds_imports_and_exercises(path):
    src = "\n".join(_src(c) for c in _cells(path))
    assert "import minq" in src or "from minq" in src, "notebooks import from minq"
    assert "default_rng(" in src, "notebooks seed an explicit RNG"
    assert "Exercises" in src and ("check(" in src or "exercises.ch" in src), \
        "notebooks end with exercises checked by minq.testing / minq.exercises"


# --- the chapter template (notebooks/README.md) ------------------------------------------------------------


TEMPLATED = [NB_DIR / name for name in TEMPLATE]


@pytest.mark.parametrize("path", TEMPLATED, ids=lambda p: p.name)
def test_title_and_seed(path):
    cells = _cells(path)
    number = path.name[:2]
    first = cells[0]
    assert first["cell_type"] == "markdown" and _src(first).startswith(f"# Chapter {number}"), \
        f"the first cell is the title '# Chapter {number} ...'"
    early = [_src(c) for c in cells[:4] if c["cell_type"] == "markdown"]
    assert any(re.search(r"\bseed\b", s, re.I) and re.search(r"\"[^\"\n]{12,}\"", s) for s in early), \
        "an early markdown cell quotes the seed's words (in double quotes)"


@pytest.mark.parametrize("path", TEMPLATED, ids=lambda p: p.name)
def test_headings_in_order(path):
    cells = _cells(path)
    where = {h: _heading_index(cells, h) for h in (VERDICT, SUMMARY, EXERCISES)}
    for heading, i in where.items():
        assert i is not None, f"{path.name} has no heading {heading!r}"
    assert where[VERDICT] < where[SUMMARY] < where[EXERCISES], f"{path.name}: {VERDICT!r}, then {SUMMARY!r}, then {EXERCISES!r}"
    verdict_cells = cells[where[VERDICT] + 1:where[SUMMARY]]
    assert any(c["cell_type"] == "code" and re.search(r"\b(print|display)\(", _src(c)) for c in verdict_cells), \
        "the verdict table is printed by code (measured numbers in the outputs, not typed)"


def _is_stub(fn: ast.FunctionDef) -> bool:
    body = fn.body[1:] if ast.get_docstring(fn) is not None else fn.body
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return False
    exc = body[0].exc.func if isinstance(body[0].exc, ast.Call) else body[0].exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


@pytest.mark.parametrize("path", TEMPLATED, ids=lambda p: p.name)
def test_exercises_are_stubs(path):
    cells = _cells(path)
    start = _heading_index(cells, EXERCISES)
    calls = 0
    for i, c in enumerate(cells[start:], start):
        if c["cell_type"] != "code":
            continue
        src = _src(c)
        calls += len(re.findall(r"exercises\.ch\d\d\.exercise_\d+\(", src))
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert _is_stub(node), f"{path.name} cell {i}: def {node.name} holds code; exercises carry stubs " \
                    "(raise NotImplementedError), the solution goes to notebooks/solutions/"
    assert calls >= 2, f"{path.name}: at least two build exercises checked by minq.exercises"


@pytest.mark.parametrize("path", TEMPLATED, ids=lambda p: p.name)
def test_learner_text_stays_on_the_subject(path):
    for i, c in enumerate(_cells(path)):
        src = _src(c)
        for pattern, why in LEAKS:
            m = pattern.search(src)
            assert m is None, f"{path.name} cell {i}: {why}: {m.group(0)!r}"
        if c["cell_type"] == "markdown":
            for target in re.findall(r"\]\(([^)\s]+)\)", src):
                if re.match(r"https?://", target) or target.startswith("#"):
                    continue
                resolved = (NB_DIR / target.split("#")[0]).resolve()
                assert resolved.is_relative_to(ROOT) and resolved.exists(), \
                    f"{path.name} cell {i}: link {target!r} leads outside the repository or nowhere"


@pytest.mark.parametrize("path", TEMPLATED, ids=lambda p: p.name)
def test_solutions_exist(path):
    for ext in (".py", ".md"):
        sol = NB_DIR / "solutions" / f"{path.stem}{ext}"
        assert sol.exists(), f"missing {sol.relative_to(ROOT)}: worked solutions and answer key"
