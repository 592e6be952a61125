import sys

from . import missing_package_line

try:
    from .cli import main
except ModuleNotFoundError as e:  # run outside the project's environment (tools/setup.sh makes .venv)
    if (e.name or "").split(".")[0] in ("convert", "edge_runtime"):
        raise
    sys.exit(missing_package_line(e.name))

sys.exit(main())
