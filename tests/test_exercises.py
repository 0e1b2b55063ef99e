"""The course kit: ``minq.testing.check`` (stubs, ``forbid``) and every chapter's exercises.

For every chapter module ``minq.exercises.chNN``: each worked solution in ``notebooks/solutions/`` passes
its check, a stub (``raise NotImplementedError``) returns False, an answer that calls a forbidden library
function fails, and every exercise number of the notebook has a solution function or an answer-key entry.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st

import minq.affine
import minq.testing
from minq import exercises
from minq.affine import choose_qparams, fake_quantize
from minq.chapters import chapter
from minq.groups import GroupedAffine, quantize_groups
from minq.testing import check, float_arrays

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "notebooks" / "solutions"
SMALL = float_arrays(max_side=4)


def reference(x):
    return fake_quantize(x, choose_qparams(x, bits=4))


def answer_by_name(x):                   # calls the function under test by its imported name
    return fake_quantize(x, choose_qparams(x, bits=4))


def answer_by_module(x):                 # ... or through its module
    return minq.affine.fake_quantize(x, minq.affine.choose_qparams(x, bits=4))


def own_answer(x):                       # a real answer: asymmetric 4-bit, integer zero point
    x = np.asarray(x, np.float32)
    lo, hi = np.minimum(x.min(), np.float32(0)), np.maximum(x.max(), np.float32(0))
    s = (hi - lo) / np.float32(15) if hi > lo else np.float32(1)
    z = np.clip(np.rint(-lo / s), 0, 15)
    return s * (np.clip(np.rint(x / s) + z, 0, 15) - z)


NOT_TINY = SMALL.filter(lambda a: not 0 < np.abs(a).max() < 1e-30)


# --- check: behaviour kept, stubs, forbid -------------------------------------------------------------


def test_check_passes_and_fails_as_before(capsys):
    assert check(own_answer, reference, NOT_TINY, n=10) is True
    assert "Correct!" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="input"):
        check(lambda x: reference(x) + 1, reference, SMALL, n=5)


def test_check_tolerance():
    assert check(lambda x: x + 1e-6, lambda x: x, SMALL, atol=1e-5, n=5, verbose=False)
    with pytest.raises(AssertionError):
        check(lambda x: x + 1e-3, lambda x: x, SMALL, atol=1e-5, n=5, verbose=False)


def test_stub_returns_false_with_a_note(capsys):
    def my_stub(x):
        raise NotImplementedError  # your code here

    assert check(my_stub, reference, SMALL, n=10) is False
    out = capsys.readouterr().out
    assert out.strip() == "not attempted yet: my_stub raises NotImplementedError (the stub)"
    assert check(my_stub, reference, SMALL, n=10, verbose=False) is False
    assert capsys.readouterr().out == ""


def test_not_implemented_after_the_first_input_is_an_error():
    calls = []

    def half_done(x):
        calls.append(1)
        if len(calls) > 1:
            raise NotImplementedError("the rest")
        return reference(x)

    with pytest.raises(NotImplementedError):
        check(half_done, reference, SMALL, n=10, verbose=False)


@pytest.mark.parametrize("answer", [answer_by_name, answer_by_module, fake_quantize],
                         ids=["by-name", "by-module", "the-function-itself"])
def test_forbid_refuses_calls_of_the_function_under_test(answer):
    with pytest.raises(AssertionError, match="asks you to write minq.affine.fake_quantize yourself"):
        check(answer, reference, SMALL, n=10, verbose=False, forbid=(fake_quantize,))
    # restored afterwards: the names and the module attribute are the library's function again
    assert globals()["fake_quantize"] is minq.affine.fake_quantize
    assert minq.affine.fake_quantize.__qualname__ == "fake_quantize" and minq.affine.fake_quantize.__module__ == "minq.affine"
    assert check(answer_by_name, reference, NOT_TINY, n=5, verbose=False)


def test_forbid_lets_an_own_answer_pass_and_the_reference_use_the_function():
    # the reference itself calls fake_quantize: only the answer runs under the ban
    assert check(own_answer, reference, NOT_TINY, n=10, verbose=False, forbid=(fake_quantize, choose_qparams))


def test_forbid_a_method_and_an_alias():
    W = st.integers(0, 100).map(lambda s: np.random.default_rng(s).standard_normal((2, 8)).astype(np.float32))

    def ref(W):
        return quantize_groups(W, bits=4, group_size=4).dequantize()

    def via_method(W):
        return quantize_groups(W, bits=4, group_size=4).dequantize()

    with pytest.raises(AssertionError, match="GroupedAffine.dequantize yourself"):
        check(via_method, ref, W, n=3, verbose=False, forbid=(GroupedAffine.dequantize,))
    assert GroupedAffine.__dict__["dequantize"].__module__ == "minq.groups"
    assert check(via_method, ref, W, n=3, verbose=False)

    namespace = {"qg": quantize_groups}                          # an alias in the answer's globals
    exec("def alias(W):\n    return qg(W, bits=4, group_size=4).dequantize()\n", namespace)
    with pytest.raises(AssertionError, match="quantize_groups yourself"):
        check(namespace["alias"], ref, W, n=3, verbose=False, forbid=(quantize_groups,))
    assert namespace["qg"] is quantize_groups


def test_forbid_restores_after_an_unrelated_error():
    def broken(x):
        raise ValueError("a bug of the answer")

    with pytest.raises(ValueError):
        check(broken, reference, SMALL, n=3, verbose=False, forbid=(fake_quantize, choose_qparams))
    assert minq.affine.fake_quantize is fake_quantize and minq.affine.choose_qparams is choose_qparams
    assert globals()["fake_quantize"] is fake_quantize


# --- every chapter's exercises ------------------------------------------------------------------------


CHAPTERS = sorted(exercises.CHAPTER_EXERCISES)


def _stem(number):
    return Path(chapter(number).notebook).stem


def _solutions(number):
    path = SOLUTIONS / f"{_stem(number)}.py"
    assert path.exists(), f"missing worked solutions {path.relative_to(ROOT)}"
    spec = importlib.util.spec_from_file_location(f"solutions_{_stem(number)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cases():
    return [pytest.param(number, k, id=f"ch{number:02d}-exercise_{k}")
            for number in CHAPTERS for k in exercises.exercises_of(number)]


def test_chapters_are_found():
    assert {1, 2, 3} <= set(CHAPTERS)
    assert exercises.ch02.__name__ == "minq.exercises.ch02"
    with pytest.raises(ValueError, match="no exercises for chapter"):
        exercises.chapter_module(99)


@pytest.fixture
def spy(monkeypatch):
    """Records the (reference, keyword arguments) of every ``check`` an exercise makes."""
    calls = []
    real = minq.testing.check

    def spying(fn, reference, strategy=None, **kw):
        calls.append((reference, kw))
        return real(fn, reference, strategy, **kw)

    monkeypatch.setattr(minq.testing, "check", spying)
    for number in CHAPTERS:
        module = exercises.chapter_module(number)
        if getattr(module, "check", None) is real:
            monkeypatch.setattr(module, "check", spying)
    return calls


@pytest.mark.parametrize("number, k", _cases())
def test_solution_passes_stub_fails_cheat_refused(number, k, spy):
    exercise = exercises.exercises_of(number)[k]
    assert (exercise.__doc__ or "").strip(), f"exercise_{k} states its task in its docstring"
    solution = getattr(_solutions(number), f"exercise_{k}", None)
    assert solution is not None, f"{_stem(number)}.py has no exercise_{k}"
    assert exercise(solution) is True, "the worked solution passes its check"
    assert spy, f"exercise_{k} calls minq.testing.check"

    def stub(*args):
        raise NotImplementedError  # your code here

    assert exercise(stub) is False, "a stub is 'not attempted yet', not an error"

    # the references call the library functions under test: handed in as the answer, each is refused
    for ref, kw in list(spy):
        if kw.get("forbid"):
            with pytest.raises(AssertionError, match="yourself"):
                exercise(ref)


def _notebook_exercise_numbers(path):
    """(numbers of the exercise items, {k: chNN} of the exercise calls) after the '## Exercises' heading."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    start = next((i for i, c in enumerate(cells)
                  if c["cell_type"] == "markdown" and re.search(r"^## Exercises\s*$", "".join(c["source"]), re.M)), None)
    assert start is not None, f"{path.name} has no '## Exercises' heading"
    numbers, calls = [], {}
    for c in cells[start:]:
        src = "".join(c["source"])
        if c["cell_type"] == "markdown":
            numbers += [int(n) for n in re.findall(r"^(\d+)\.\s", src, re.M)]
        else:
            calls.update({int(k): m for m, k in re.findall(r"exercises\.(ch\d\d)\.exercise_(\d+)\(", src)})
    return numbers, calls


@pytest.mark.parametrize("number", CHAPTERS, ids=lambda n: f"ch{n:02d}")
def test_every_exercise_has_an_answer(number):
    notebook = ROOT / chapter(number).notebook
    numbers, calls = _notebook_exercise_numbers(notebook)
    assert numbers == list(range(1, len(numbers) + 1)), f"{notebook.name}: one numbering 1..K, got {numbers}"
    module = exercises.chapter_module(number)
    builds = exercises.exercises_of(module)
    assert set(calls) == set(builds), f"{notebook.name} calls exercises {sorted(calls)}, {module.__name__} has {sorted(builds)}"
    assert set(calls.values()) <= {f"ch{number:02d}"}
    assert set(builds) <= set(numbers), "every build exercise is numbered in the notebook"
    assert len(builds) >= 2, "at least two build exercises per chapter"
    solutions = _solutions(number)
    key = (SOLUTIONS / f"{_stem(number)}.md").read_text(encoding="utf-8")
    keyed = {int(n) for n in re.findall(r"^(?:#{2,4}\s+)?(\d+)\.\s", key, re.M)}
    for k in numbers:
        assert hasattr(solutions, f"exercise_{k}") or k in keyed, f"exercise {k} has no solution or answer key"
    assert set(builds) <= keyed, "the answer key has a note on every build exercise too"


def test_solution_files_import_no_notebook_state():
    for number in CHAPTERS:
        tree = ast.parse((SOLUTIONS / f"{_stem(number)}.py").read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), "a solutions file says what it is"
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("exercise_"):
                assert ast.get_docstring(node), f"{node.name} explains the solution"
    assert "solutions" not in sys.modules


def test_library_functions_finds_what_exists():
    """``forbid=`` lists: dotted paths to functions and methods; missing modules or names are left out."""
    from minq import kquants, ternary
    from minq.testing import library_functions

    got = library_functions("minq.ternary.quantize", "minq.kquants.GGMLWeight.quantize", "minq.no_such.f",
                            "minq.ternary.no_such", "no_such_package.f")
    assert got == (ternary.quantize, kquants.GGMLWeight.quantize)
