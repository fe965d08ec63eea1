"""Development code of the source checkout: test and QA helpers that are not part of the
installed ``chunkwise`` package (tests, benchmarks and tools import them; ``pip install`` leaves them out).

* :mod:`devtools.fuzz` -- the seeded mutation fuzzer (``python -m devtools.fuzz``; CI runs it in
  ``tests/test_fuzz.py``);
* :mod:`devtools.float_onnx` -- float ONNX twins of quantized graphs (onnxruntime peers of the benchmarks);
* :mod:`devtools.accuracy` -- output SQNR of emulated quantized models vs onnxruntime float
  (``tools/compare_ppq.py``).

Imported from the repository root: pytest puts it on ``sys.path`` (``pythonpath`` in pyproject.toml),
``python -m devtools.fuzz`` runs from the root, tools scripts add the root themselves.
"""
