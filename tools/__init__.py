"""Command-line tools run as ``python -m tools.NAME`` from the project folder (benchmark, runtime figures,
data makers): thin flag parsers over the library in ``edge_runtime/`` and ``convert/``."""
import sys

# Every tool needs numpy and OpenCV (the project's .venv, a device environment, MediaPipe's venv have
# them): without them, one line instead of a traceback from the tool's first import.
try:
    import cv2  # noqa: F401
    import numpy  # noqa: F401
except ModuleNotFoundError as e:
    sys.exit(f"error: {e.name} is not installed for {sys.executable}: run `source .venv/bin/activate` "
             f"(made by `bash tools/setup.sh`) or install the project (`pip install .`)")
