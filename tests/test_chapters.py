"""minq.CHAPTERS is the one table of chapters: the README's table, the notebooks folder and the modules
on disk agree with it, and the registry registers the schemes of every chapter that has methods."""

import importlib
import re
from pathlib import Path

import pytest

import minq
from minq import registry
from minq.chapters import CHAPTERS, chapter

ROOT = Path(__file__).resolve().parents[1]


def readme_chapter_rows():
    """``{number: (modules, notebook)}`` from the README's chapter table."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Chapters"):]
    rows = {}
    for line in table.splitlines()[1:]:
        m = re.match(r"\|\s*(\d\d)\s*\|[^|]*\|([^|]*)\|([^|]*)\|", line)
        if m:
            rows[int(m[1])] = (tuple(re.findall(r"`([^`]+\.py)`", m[2])), re.findall(r"`([^`]+)`", m[3])[0])
        elif rows and not line.startswith("|"):
            break
    return rows


def test_readme_table_is_the_chapters_table():
    rows = readme_chapter_rows()
    assert sorted(rows) == [c.number for c in CHAPTERS]
    for c in CHAPTERS:
        assert rows[c.number] == (c.modules, c.notebook), f"README row {c.number:02d}"


def test_every_notebook_is_a_chapter_and_exists():
    on_disk = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert on_disk == sorted(c.notebook for c in CHAPTERS)
    for c in CHAPTERS:
        assert Path(c.notebook).name.startswith(f"{c.number:02d}_")


def test_modules_exist_and_methods_import():
    for c in CHAPTERS:
        for m in c.modules:
            assert (ROOT / m).is_file(), m
        for mod in c.methods:
            importlib.import_module(mod)
    assert minq.CHAPTERS is CHAPTERS


def test_registry_loads_the_chapters_methods_in_order():
    want = [m for c in CHAPTERS for m in c.methods if m != "minq.registry"]
    assert list(registry.METHOD_MODULES) == want


def test_chapter_lookup():
    assert chapter(6).title == "GPTQ"
    with pytest.raises(ValueError, match="no chapter 99; chapters: 01, 02"):
        chapter(99)


def test_registry_families_and_quick_defaults():
    quick = registry.default_schemes(quick=True)
    assert quick[:2] == ["rtn-w8", "rtn-w4g64"] and set(quick) <= set(registry.default_schemes())
    assert {registry.family_of(n) for n in quick} == {"rtn", "w8a8", "llmint8", "smoothquant", "gptq", "awq", "gguf"}
    with pytest.raises(ValueError, match="unknown scheme 'nope'"):
        registry.family_of("nope")


def test_two_families_may_not_claim_one_name(monkeypatch):
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))      # leave the real table alone
    with pytest.raises(ValueError, match="families 'rtn-clash' and 'rtn' both match 'rtn-w8'"):
        registry.register_family("rtn-clash", r"rtn-w\d+", lambda m: None, "rtn-w{bits}")
    with pytest.raises(ValueError, match="already registered"):
        registry.register_family("rtn", r"x", lambda m: None, "x")
    with pytest.raises(ValueError, match="does not match its pattern"):
        registry.register_family("toy", r"toy-\d", lambda m: None, "toy-N", defaults=("toy-x",))
    # a pattern that overlaps without listing names is caught at lookup
    registry.register_family("greedy", r"awq\+.*", lambda m: None, "awq+*")
    with pytest.raises(ValueError, match="matches the families"):
        registry.get("awq+gptq-w4g64")
