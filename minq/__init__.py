"""minq: a from-scratch reference implementation of LLM quantization.

Chapters (module: concept):
    minq.formats   01 float formats (FP32 ... FP4, E8M0): bit-exact encode/decode
    minq.affine    02 scale and zero point: choose_qparams -> quantize -> dequantize
    minq.groups    03 group quantization and the GroupedAffine container (minq.packing: bit packing)
    minq.registry  scheme names -> quantizers (rtn-w4g64, ...)
    minq.report    the main job (``minq report``)
    minq.testing   assertion helpers, hypothesis strategies and ``check`` for exercises
    minq.models    the real-model testbed: ``load_model("smollm2")``, a NumPy Llama forward
"""

__version__ = "0.1.0"


def load_model(name_or_path, **kwargs):
    """``minq.models.load_model``: a model by asset name (``"smollm2"``) or a .gguf path."""
    from minq.models import load_model as _load

    return _load(name_or_path, **kwargs)
