"""Fixtures for tests and benchmarks, importable from anywhere (``tests/``, ``benchmarks/``).

Nothing in the package imports this subpackage, and importing it imports nothing heavy:

* :mod:`jaxforget.testing.torch_reference`: the PyTorch reference IResNet and MobileFaceNet
  (InsightFace parameter names); needs PyTorch.
* :mod:`jaxforget.testing.variables`: random Flax variables for a model config, and the relative
  error the PyTorch comparisons use.
* :mod:`jaxforget.testing.payloads`: a pickle that runs code when loaded, for the tests of the
  restricted readers.
"""
