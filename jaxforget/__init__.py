"""jaxforget: face identity unlearning for retrieval via embedding dispersion (JAX/Flax)."""

__version__ = "0.1.0"
