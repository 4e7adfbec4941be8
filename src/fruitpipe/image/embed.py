"""Pixels -> features with the chosen engine (ONNX Runtime or OpenVINO); one compiled model per
model file, engine, precision and thread count per Python worker process."""
from __future__ import annotations

import logging
import threading
from typing import Protocol

import numpy as np

from fruitpipe.image.models import Preprocessing
from fruitpipe.runtime import ONNXRUNTIME, Runtime

logger = logging.getLogger(__name__)
_ENGINES: dict[tuple[str, Runtime, int], Engine] = {}  # the per-process model cache (workers are reused)
_LOCK = threading.Lock()
FP32 = Runtime.for_precision("fp32")


class Engine(Protocol):
    input_type: str  # "tensor(uint8)" for fruitpipe's exports, float for user ONNX files

    def run(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxRuntimeEngine:
    def __init__(self, model_path: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        graph_input = self.session.get_inputs()[0]
        self.input_name, self.input_type = graph_input.name, graph_input.type

    def run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: batch})[0])


class OpenVinoEngine:
    """OpenVINO on the CPU. The precision is always asked for explicitly: on AMX CPUs OpenVINO's
    default is bf16, so "fp32" must be requested. No CPU pinning: Spark runs one worker process per
    task slot, and pinned threads of two processes would share one core (measured: half the speed)."""

    def __init__(self, model_path: str, threads: int, precision: str) -> None:
        import openvino as ov

        hint = {"bf16": "bf16", "fp32": "f32"}[precision]
        self.compiled = ov.Core().compile_model(model_path, "CPU", {
            "INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False})
        element = self.compiled.input(0).get_element_type().get_type_name()
        self.input_type = "tensor(uint8)" if element == "u8" else f"tensor({element})"
        self._local = threading.local()  # an infer request serves one thread at a time (serve's pool)

    def run(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return np.array(request.infer({0: batch})[self.compiled.output(0)], copy=True)


def engine_for(model_path: str, runtime: Runtime, threads: int) -> Engine:
    """The process-wide engine for this model file and runtime, created on first use only."""
    key = (model_path, runtime, threads)
    with _LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = (OnnxRuntimeEngine(model_path, threads) if runtime.engine == ONNXRUNTIME
                             else OpenVinoEngine(model_path, threads, runtime.precision))
            logger.info("loaded %s on %s (%s) with %d threads", model_path, runtime.engine, runtime.precision, threads)
        return _ENGINES[key]


def holds(model_path: str, runtime: Runtime, threads: int) -> bool:
    """Whether this process already holds the engine (a keep-warm task says if its worker had to load it)."""
    with _LOCK:
        return (model_path, runtime, threads) in _ENGINES


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


def embed(pixels: np.ndarray, preprocessing: Preprocessing, model_path: str, threads: int,
          runtime: Runtime = FP32) -> np.ndarray:
    """uint8 [N, H, W, 3] -> float32 [N, feature_dim], in model calls of `runtime.infer_batch` images."""
    engine = engine_for(model_path, runtime, threads)
    step = runtime.infer_batch
    starts = range(0, max(len(pixels), 1), step)  # an empty batch still makes one (empty) call, as before
    features = np.concatenate([engine.run(model_input(pixels[start:start + step], preprocessing, engine.input_type))
                               for start in starts])
    return np.asarray(features, dtype=np.float32).reshape(len(pixels), -1)
