"""minq: a from-scratch reference implementation of LLM quantization.

Chapters (module: concept):
    minq.formats   01 float formats (FP32 ... FP4, E8M0): bit-exact encode/decode
    minq.affine    02 scale and zero point: choose_qparams -> quantize -> dequantize
    minq.groups    03 group quantization and the GroupedAffine container (minq.packing: bit packing)
    minq.ptq, minq.w8a8, minq.smoothquant  04 post-training quantization (minq.observers, minq.calibration)
    minq.gptq, minq.gptq_model          06 GPTQ
    minq.awq, minq.awq_model            07 AWQ (minq.folding: scales folded into the model)
    minq.kquants, minq.kquants_mix      08 llama.cpp's block types and mixes (minq.gguf: reading GGUF)
    minq.CHAPTERS  the table of chapters (number, title, modules, notebook)
    minq.registry  scheme names -> quantizers (rtn-w4g64, ...)
    minq.report    the main job (``minq report``)
    minq.testing   assertion helpers, hypothesis strategies and ``check`` for exercises
    minq.models    the real-model testbed: ``load_model("smollm2")``, a readable NumPy Llama
    minq.runtime   what a learner can skip: threads, BLAS pinning, Numba kernels of the fast forward
"""

from minq.chapters import CHAPTERS  # the table of chapters: plain data, no heavy imports

__all__ = ["CHAPTERS", "load_model", "quantize", "perplexity", "__version__"]

__version__ = "0.1.0"


# The public API of the testbed, imported lazily so ``import minq`` stays light.


def load_model(name_or_path, **kwargs):
    """A model by asset name (``"smollm2"``, ``"minilm"``) or a .gguf path (``minq.models.load_model``)."""
    from minq.models import load_model as _load_model

    return _load_model(name_or_path, **kwargs)


def quantize(model, scheme, calibration=None, **kwargs):
    """A new model quantized with the registered ``scheme`` (``minq.api.quantize``)."""
    from minq.api import quantize as _quantize

    return _quantize(model, scheme, calibration, **kwargs)


def perplexity(model, text, window=512, **kwargs):
    """Perplexity over non-overlapping windows (``minq.eval.perplexity``)."""
    from minq.eval import perplexity as _perplexity

    return _perplexity(model, text, window, **kwargs)
