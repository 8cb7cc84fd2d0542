"""metricjax: deep metric learning and similarity search in JAX/Flax."""

__version__ = "0.1.0"
