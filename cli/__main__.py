"""``python -m refitd.cli ARGS`` is ``refitd ARGS``."""

from refitd.cli.main import main

main()
