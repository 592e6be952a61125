"""Command-line tools run as ``python -m tools.NAME`` from the project folder (benchmark, runtime figures,
data makers): thin flag parsers over the library in ``edge_runtime/`` and ``convert/``."""
