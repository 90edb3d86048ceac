"""refitd: serve a fine-tuned transformer classifier, watch it drift, refit and promote.

The installed import namespace. Its subpackages live in the repository's top-level folders
(``core/``, ``serving/``, ``flows/``, ``daemon/``, ``cli/``, ``demo/``, ``bench/``) and are
mapped here by ``[tool.setuptools] package-dir`` in pyproject.toml, so nothing of refitd is
installed as a top-level ``core`` or ``daemon`` (python-daemon owns ``daemon``).

In a source checkout this folder is found first whenever the checkout is the working directory
(``python -m`` puts it on ``sys.path``), and it would shadow an installed refitd that has the
subpackages. So when it sits in a checkout, the checkout's root joins this package's search
path and ``refitd.core`` is the checkout's ``core/``: the same code the mapping installs.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "core" / "settings.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 - a package's own search path
