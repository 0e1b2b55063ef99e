"""The table of chapters: number, title, modules, notebook — the one place that says what minq teaches.

    for ch in minq.CHAPTERS:
        print(ch.number, ch.title, ch.modules, ch.notebook)

The registry imports the chapters' ``methods`` (the modules that register scheme families) from here,
in chapter order, so ``minq report`` lists methods in the order a learner meets them; the README's
chapter table and the notebooks folder are checked against it by ``tests/test_chapters.py``. Adding a
method: one module that calls ``registry.register_family`` and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Chapter", "CHAPTERS", "chapter"]


@dataclass(frozen=True)
class Chapter:
    """One chapter: ``modules`` are the files a learner reads (the main one first), ``methods`` the
    modules among them (or beside them) that register quantization schemes, ``notebook`` its notebook."""

    number: int
    title: str
    modules: tuple[str, ...]
    notebook: str
    methods: tuple[str, ...] = ()


CHAPTERS: tuple[Chapter, ...] = (
    Chapter(1, "float formats", ("minq/formats.py", "minq/formats_kernels.py"), "notebooks/01_float_formats.ipynb"),
    Chapter(2, "scale and zero point", ("minq/affine.py",), "notebooks/02_scale_zero_point.ipynb"),
    Chapter(3, "group quantization", ("minq/groups.py", "minq/packing.py"),
            "notebooks/03_group_quantization.ipynb", methods=("minq.registry",)),
    Chapter(4, "post-training quantization",
            ("minq/observers.py", "minq/ptq.py", "minq/w8a8.py", "minq/smoothquant.py", "minq/folding.py"),
            "notebooks/04_ptq.ipynb", methods=("minq.ptq", "minq.w8a8", "minq.smoothquant")),
    Chapter(5, "quantization-aware training", ("minq/qat.py", "minq/qat_llama.py", "minq/models/tiny.py"),
            "notebooks/05_qat.ipynb"),
    Chapter(6, "GPTQ", ("minq/gptq.py", "minq/gptq_model.py"), "notebooks/06_gptq.ipynb",
            methods=("minq.gptq_model",)),
    Chapter(7, "AWQ", ("minq/awq.py", "minq/awq_model.py", "minq/folding.py"), "notebooks/07_awq.ipynb",
            methods=("minq.awq_model",)),
    Chapter(8, "k-quants and GGUF",
            ("minq/kquants.py", "minq/kquants_legacy.py", "minq/kquants_k.py", "minq/kquants_iq.py",
             "minq/kquants_search.py", "minq/kquants_weighted.py", "minq/kquants_mix.py", "minq/imatrix.py",
             "minq/gguf.py"), "notebooks/08_kquants.ipynb", methods=("minq.kquants_mix",)),
    Chapter(9, "KV-cache quantization", ("minq/kvcache_quant.py", "minq/kvcache_model.py", "minq/kvcache.py"),
            "notebooks/09_kv_cache.ipynb", methods=("minq.kvcache_model",)),
    Chapter(10, "FP8 and block formats",
            ("minq/fp8.py", "minq/fp8_model.py", "minq/mx.py", "minq/mx_model.py", "minq/nf4.py"),
            "notebooks/10_fp8_and_block_formats.ipynb", methods=("minq.fp8_model", "minq.mx_model", "minq.nf4")),
    Chapter(11, "ternary weights", ("minq/ternary.py", "minq/ternary_kernels.py", "minq/bitnet.py"),
            "notebooks/11_ternary.ipynb", methods=("minq.ternary",)),
    Chapter(12, "rotations and HQQ", ("minq/rotation.py", "minq/rotation_model.py", "minq/hqq.py"),
            "notebooks/12_rotations_and_hqq.ipynb", methods=("minq.rotation_model", "minq.hqq")),
    Chapter(14, "the quantized runtime",
            ("minq/runtime/packed.py", "minq/runtime/gemv.py", "minq/runtime/gemv_int.py", "minq/runtime/gemv_q8.py",
             "minq/runtime/gemv_lut.py", "minq/runtime/gemv_ggml.py", "minq/runtime/gemv_ggml_kernels.py"),
            "notebooks/14_quantized_runtime.ipynb"),
)


def chapter(number: int) -> Chapter:
    """The chapter numbered ``number``; ValueError listing the chapters that exist."""
    for ch in CHAPTERS:
        if ch.number == number:
            return ch
    raise ValueError(f"no chapter {number!r}; chapters: {', '.join(f'{c.number:02d}' for c in CHAPTERS)}")
