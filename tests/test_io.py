"""minq._io: atomic writes keep what the user had on failure, keep the file's permissions, and the
temporaries of killed writers are found and removed."""

import stat
import subprocess

import pytest

from minq._io import atomic_path, atomic_write_text, remove_stale_temporaries, temp_prefix


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["report.md"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600])
def test_rewrite_keeps_the_permissions(tmp_path, mode):
    path = tmp_path / "report.md"
    path.write_text("old")
    path.chmod(mode)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == mode


def test_temporaries_name_their_process_and_only_dead_ones_go(tmp_path):
    p = subprocess.Popen(["true"])
    p.wait()
    dead = p.pid
    stale = [tmp_path / f".report.md.{dead}.abcd_123.tmp.md", tmp_path / f".fetch.{dead}.x1y2z3w4"]
    stale[0].write_text("x")
    stale[1].mkdir()
    mine = tmp_path / f"{temp_prefix('report.md')}abcdefgh.tmp.md"
    mine.write_text("in use")
    alive = tmp_path / ".report.md.1.abcdefgh.tmp.md"                  # pid 1 runs
    alive.write_text("in use")
    user = [tmp_path / ".hidden", tmp_path / f".notes.{dead}.txt", tmp_path / "report.md"]
    for u in user:
        u.write_text("mine")
    assert sorted(remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in [mine, alive, *user]) and not any(p.exists() for p in stale)
