"""The fast runtime: what makes minq's readable models run fast, and what a learner can skip.

The readable models (``minq.models``) are plain NumPy, written to be read and stepped through. This
package runs the same math fast on a few CPU cores, in the reference-plus-kernels layout of llm.c:
every piece here names the reference function it equals, and a test proves it.

- ``minq.runtime.parallel``: one pool of Python threads, BLAS pinned to one thread while it runs
  (threadpoolctl), the threaded GEMM ``_matmul_t``, and the rules for when threads pay off.
- ``minq.runtime.kernels``: the Numba kernels of the elementwise work (RMSNorm, RoPE, SwiGLU, exp,
  the causal softmax), each equal to its reference in ``minq.models.llama``.
- ``minq.runtime.llama_fast``: the Llama block and head on fused layouts, token pieces and query
  tiles — ``LlamaModel.logits(ids, engine="fast")``, the default.
- ``minq.runtime.packed``: packed models (``model.packed()``), the packed-linear protocol and its dispatch
  to one fused dequantize-GEMV per format: ``gemv`` / ``gemv_int`` (chapter 03's grouped integers),
  ``gemv_q8`` (8-bit inputs and integer dot products, the llama.cpp way), ``gemv_lut`` (NF4, FP8),
  ``gemv_ggml`` / ``gemv_ggml_kernels`` (llama.cpp's blocks); ``memory`` (resident size). Chapter 14.

Numba is optional: with ``NUMBA_DISABLE_JIT=1`` (or without Numba) the kernels' dispatchers run the
NumPy references, and the runtime still threads its GEMMs.
"""
