import sys

try:
    from .cli import main
except ModuleNotFoundError as e:  # run outside the project's environment (tools/setup.sh makes .venv)
    if (e.name or "").split(".")[0] in ("convert", "edge_runtime"):
        raise
    sys.exit(f"error: {e.name} is not installed for {sys.executable}: run `source .venv/bin/activate` "
             f"(made by `bash tools/setup.sh`) or install the project (`pip install .`)")

sys.exit(main())
