"""On-device classification runtime: numpy, OpenCV and a TFLite interpreter, nothing else."""
__version__ = "0.1.0"
