"""Command-line tools run as ``python -m tools.NAME`` from the project folder (benchmark, runtime figures,
data makers): thin flag parsers over the library in ``edge_runtime/`` and ``convert/``."""
import sys

from convert import missing_package_line

# Every tool needs numpy and OpenCV (the project's .venv, a device environment, MediaPipe's venv have
# them): without them, one line instead of a traceback from the tool's first import.
try:
    import cv2  # noqa: F401
    import numpy  # noqa: F401
except ModuleNotFoundError as e:
    sys.exit(missing_package_line(e.name))
