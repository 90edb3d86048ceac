"""refitd: serve a fine-tuned transformer classifier, watch it drift, refit and promote.

The installed import namespace. Its subpackages live in the repository's top-level folders
(``core/``, ``serving/``, ``flows/``, ``daemon/``, ``cli/``, ``demo/``, ``bench/``) and are
mapped here by ``[tool.setuptools] package-dir`` in pyproject.toml, so nothing of refitd is
installed as a top-level ``core`` or ``daemon`` (python-daemon owns ``daemon``).
"""

__version__ = "0.1.0"
