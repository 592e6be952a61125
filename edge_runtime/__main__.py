import sys

try:
    from .cli import main

    sys.exit(main())
except KeyboardInterrupt:  # Ctrl-C before the runtime's own handler is installed (while importing)
    sys.exit(130)
except ModuleNotFoundError as e:
    if e.name not in ("numpy", "cv2"):
        raise
    sys.exit(f"error: {e.name} is not installed for {sys.executable}: on a workstation run `source "
             f".venv/bin/activate` (made by `bash tools/setup.sh`); on a device `pip install numpy "
             f"opencv-python-headless ai-edge-litert` (README, 'Device install')")
