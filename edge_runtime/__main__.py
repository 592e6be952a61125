import sys

try:
    from .cli import main

    sys.exit(main())
except KeyboardInterrupt:  # Ctrl-C before the runtime's own handler is installed (while importing)
    sys.exit(130)
