"""The notebooks' build exercises, checked: one module per chapter, ``minq.exercises.chNN``.

The scheme (notebooks/README.md tells the whole template):

- A chapter numbers its exercises once, 1, 2, 3, ... across its three tiers, graded easy -> hard:
  **recall** (read the chapter back), **derive** (pen and paper, then a line of code to confirm),
  **build** (write a function). Numbers do not restart in a tier.
- Build exercise ``k`` of chapter ``NN`` is the function ``minq.exercises.chNN.exercise_<k>(fn) -> bool``.
  Its docstring states the task. It calls ``minq.testing.check(fn, reference, strategy, forbid=...)``
  with the reference, the generated inputs and the tolerance the task needs, and returns the result:
  True when ``fn`` matches on every input, False (with a one-line note) while ``fn`` is still the stub
  ``raise NotImplementedError``, AssertionError with the smallest input where it differs otherwise.
  ``forbid`` names the library functions the task asks you to write yourself: an answer that just
  calls one of them fails.
- The learner notebook carries the task and a stub, never the answer::

      from minq import exercises

      def my_decode_e2m1(codes):
          raise NotImplementedError  # your code here

      exercises.ch01.exercise_6(my_decode_e2m1)

- The worked answers live beside the notebooks, for teachers: ``notebooks/solutions/NN_topic.py``
  (a function ``exercise_<k>`` per build exercise, which passes the check) and
  ``notebooks/solutions/NN_topic.md`` (the answer key of every recall / derive question and a note per
  build exercise). ``tests/test_exercises.py`` proves every solution passes, every stub returns False
  and every answer that calls a forbidden function fails.

``CHAPTER_EXERCISES`` maps each chapter number to its module name; the modules are found on disk, so a
new chapter only adds ``chNN.py``. ``minq.exercises.ch02`` imports its module on first use.
"""

from __future__ import annotations

import importlib
import pkgutil
import re

__all__ = ["CHAPTER_EXERCISES", "chapter_module", "exercises_of"]

_MODULE = re.compile(r"ch(\d\d)")
_EXERCISE = re.compile(r"exercise_(\d+)")


def _find_chapters() -> dict[int, str]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        m = _MODULE.fullmatch(info.name)
        if m:
            found[int(m.group(1))] = f"{__name__}.{info.name}"
    return dict(sorted(found.items()))


CHAPTER_EXERCISES: dict[int, str] = _find_chapters()


def chapter_module(number: int):
    """The exercise module of chapter ``number`` (imported); ValueError naming the chapters that have one."""
    if number not in CHAPTER_EXERCISES:
        have = ", ".join(f"{n:02d}" for n in CHAPTER_EXERCISES)
        raise ValueError(f"no exercises for chapter {number!r}; chapters with exercises: {have}")
    return importlib.import_module(CHAPTER_EXERCISES[number])


def exercises_of(module) -> dict[int, object]:
    """``{k: exercise_<k>}`` of a chapter module (or chapter number), in exercise order."""
    if isinstance(module, int):
        module = chapter_module(module)
    found = {int(m.group(1)): getattr(module, name)
             for name in dir(module) if (m := _EXERCISE.fullmatch(name))}
    return dict(sorted(found.items()))


def __getattr__(name):
    m = _MODULE.fullmatch(name)
    if m and int(m.group(1)) in CHAPTER_EXERCISES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + [f"ch{n:02d}" for n in CHAPTER_EXERCISES])
