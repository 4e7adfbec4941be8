"""Pixels -> features with ONNX Runtime; one session per model file per Python worker process."""
from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from fruitpipe.models import Preprocessing

logger = logging.getLogger(__name__)
_SESSIONS: dict[tuple[str, int], Any] = {}
_LOCK = threading.Lock()


def session_for(onnx_path: str, threads: int) -> Any:
    """The process-wide ONNX Runtime session for this file, created on first use only."""
    key = (onnx_path, threads)
    with _LOCK:
        if key not in _SESSIONS:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            _SESSIONS[key] = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
            logger.info("loaded %s with %d threads", onnx_path, threads)
        return _SESSIONS[key]


def normalise(pixels: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 model input, (pixel / 255 - mean) / std in the declared layout."""
    scale = np.float32(1.0 / 255.0)
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    std = np.asarray(preprocessing.std, dtype=np.float32)
    batch = (pixels.astype(np.float32) * scale - mean) / std
    if preprocessing.layout == "NCHW":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch)


def model_input(pixels: np.ndarray, preprocessing: Preprocessing, input_type: str) -> np.ndarray:
    """What the graph takes: fruitpipe's exports normalise inside (uint8 NHWC in); other ONNX files get floats."""
    if input_type == "tensor(uint8)":
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    return normalise(pixels, preprocessing)


def embed(pixels: np.ndarray, preprocessing: Preprocessing, onnx_path: str, threads: int) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, feature_dim]."""
    session = session_for(onnx_path, threads)
    graph_input = session.get_inputs()[0]
    features = session.run(None, {graph_input.name: model_input(pixels, preprocessing, graph_input.type)})[0]
    return np.asarray(features, dtype=np.float32).reshape(len(pixels), -1)
