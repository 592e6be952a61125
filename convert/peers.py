"""Workstation peers of the benchmark: the same model under ONNX Runtime, OpenCV DNN and PyTorch,
and ONNX Runtime's own int8 (QDQ) re-quantization of it.

Each peer is a small adapter registered with the device-side harness (:mod:`edge_runtime.bench`);
the harness measures it in a child process that runs this module. The float model files are the
artifact's siblings, found through its metadata.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from edge_runtime import bench
from edge_runtime.bench import Peer, PeerUnavailable, register_peer, sibling
from edge_runtime.fileio import atomic_write

MODULE = "convert.peers"


def _float_onnx(int8: Path) -> Path:
    return sibling(int8, "float_onnx")


def _onnxruntime(case, info):
    import onnxruntime as ort

    def load():
        so = ort.SessionOptions()
        so.intra_op_num_threads = case.threads
        so.inter_op_num_threads = 1
        # each case has its own process, so ONNX Runtime keeps its default spinning thread pool
        sess = ort.InferenceSession(case.path, so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name

        def predict(crop):
            return sess.run(None, {name: crop.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
        return predict, None
    return load


def _opencv_dnn(case, info):
    import cv2

    def load():
        cv2.setNumThreads(case.threads)
        net = cv2.dnn.readNetFromONNX(case.path)

        def predict(crop):
            net.setInput(crop.transpose(2, 0, 1)[None].astype(np.float32))
            return net.forward()[0]
        return predict, None
    return load


def torch_weights(info) -> Path:
    """The weights file an artifact was converted from, when this machine has exactly that file: a
    named source whose sha256 is the one the artifact records.

    Raises:
        PeerUnavailable: converted from ONNX (no PyTorch model), from a weights file given by path,
            or the named weights here differ from those the artifact was made from.
    """
    from .errors import WeightsError
    from .weights import ALIASES, WEIGHTS, resolve
    from edge_runtime.fileio import sha256_file

    extra = info.extra if info else {}
    name, digest = extra.get("weights"), extra.get("weights_sha256")
    if not name:
        raise PeerUnavailable("the artifact was converted from ONNX: there is no PyTorch model of it")
    key = ALIASES.get(name, name)
    key = key if key in WEIGHTS else next((k for k, r in WEIGHTS.items() if r.name == name), None)
    if key is None:
        raise PeerUnavailable(f"the artifact was converted from the weights file {name!r}, not a named source: "
                              "benchmark that file's model directly")
    try:
        path = resolve(key, download=False)
    except WeightsError as e:
        raise PeerUnavailable(str(e)) from None
    if digest and sha256_file(path) != digest:
        raise PeerUnavailable(f"{path.name} here is not the file the artifact was converted from "
                              f"(sha256 {digest[:12]}... recorded)")
    return path


def _pytorch_model(int8: Path) -> Path:
    from edge_runtime.metadata import MetadataError, read_model_info

    try:
        torch_weights(read_model_info(int8))
    except MetadataError as e:
        raise PeerUnavailable(str(e)) from None
    return _float_onnx(int8)  # the float model whose size is reported


def _pytorch(case, info):
    import torch

    def load():
        torch.set_num_threads(case.threads)
        from .torch_eval import torch_predict
        from .weights import load_model

        predict_batch = torch_predict(*load_model(str(torch_weights(info))))  # the evaluator's own
        return (lambda crop: predict_batch(crop[None])[0]), None
    return load


SOURCE_KEY = "source_sha256"  # in the QDQ model's metadata: the float ONNX it was quantized from


def qdq_model(int8: Path) -> Path:
    """ONNX Runtime's own int8 (QDQ) version of the artifact's float ONNX sibling, calibrated on the
    project's calibration photos; kept beside it as ``<stem>_qdq_int8.onnx`` and made again when the
    float ONNX changed (it records the sha256 of the float ONNX it was made from).

    Raises:
        PeerUnavailable: no float ONNX sibling, or onnxruntime is not installed.
    """
    source = _float_onnx(int8)
    target = source.with_name(source.stem.removesuffix("_float") + "_qdq_int8.onnx")
    try:
        import onnx
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    except ImportError as e:
        raise PeerUnavailable(f"{e.name} is not installed") from None
    from edge_runtime.fileio import sha256_file

    digest = sha256_file(source)
    if target.exists():
        try:
            made_from = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]) \
                .get_modelmeta().custom_metadata_map.get(SOURCE_KEY)
        except Exception:  # noqa: BLE001 (a damaged or foreign file is made again)
            made_from = None
        if made_from == digest:
            return target
    from edge_runtime.metadata import read_model_info
    from edge_runtime.preprocess import read_image, resize_crop

    from .calibration_data import default_calib_dir, list_calibration_images

    pp = read_model_info(int8).preprocessing
    photos, _ = list_calibration_images(default_calib_dir())
    crops = [resize_crop(read_image(str(p), fit=pp), pp).transpose(2, 0, 1)[None].astype(np.float32) for p in photos]
    name = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter({name: c} for c in crops)

        def get_next(self):
            return next(self.feeds, None)

    def make(tmp: Path) -> None:
        quantize_static(str(source), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, {SOURCE_KEY: digest})
        onnx.save(model, str(tmp))

    atomic_write(target, b"", check=make)
    return target


register_peer(Peer("onnxruntime", MODULE, _float_onnx), _onnxruntime)
register_peer(Peer("onnxruntime-int8", MODULE, qdq_model), _onnxruntime)
register_peer(Peer("opencv-dnn", MODULE, _float_onnx), _opencv_dnn)
register_peer(Peer("pytorch", MODULE, _pytorch_model), _pytorch)

if __name__ == "__main__":
    sys.exit(bench.child_main(sys.argv[1]))
