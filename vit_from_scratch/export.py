"""Chapter 14: the trained ViT outside PyTorch — an exported graph, ONNX Runtime, and smaller precisions.

:func:`export_program` traces the model once with ``torch.export`` into a graph of ATen operations
with a dynamic batch dimension; :func:`export_onnx` turns that graph into an ONNX file (the ``torch.onnx``
dynamo exporter, with ``onnxscript``), which :func:`onnx_session` runs with ONNX Runtime on the CPU.

Smaller files and faster arithmetic come from lower precisions, all made from the float32 file:
:func:`quantize_dynamic_int8` (weights int8 per output channel, activations quantised on the fly),
:func:`quantize_static_int8` (activations' ranges calibrated once on training images, Jacob et al.,
2018), and :func:`convert_float16`. :func:`graph_parts` names the nodes of each part of the graph (the
linear layers, attention's two products, softmax, LayerNorm, GELU, residual additions), so that a
static quantisation can take the parts one at a time and measure which tolerate int8.
:func:`interleaved_latency` times several runtimes in alternating rounds and reports each one's latency
as a ratio against a reference, with the spread of that ratio across rounds. :func:`paired_accuracy_change`
compares two precisions' accuracies on the same test images, with the standard error of a paired difference.

Letters: B batch, C channels, H/W image side, K classes.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import re
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .efficiency import interleaved_benchmark

__all__ = ["ExportError", "INPUT_NAME", "OUTPUT_NAME", "PARTS", "onnx_export_available", "export_program", "export_onnx",
           "onnx_session", "onnx_logits", "graph_parts", "quantize_dynamic_int8", "quantize_static_int8",
           "convert_float16", "PairedChange", "paired_accuracy_change", "LatencyRatio",
           "interleaved_latency"]

INPUT_NAME, OUTPUT_NAME = "images", "logits"  # the ONNX graph's input and output
# the parts of a ViT's ONNX graph that :func:`graph_parts` finds, in the order of a block
PARTS = ("linear layers", "attention products", "softmax", "LayerNorm", "GELU", "residual additions")


class ExportError(RuntimeError):
    """A model that ``torch.export`` cannot trace, with the line that stops it and how to fix it."""


def onnx_export_available() -> bool:
    """Whether this torch's dynamo ONNX exporter writes this model's graph correctly: torch >= 2.14, where it
    was tested. torch 2.4 still needs example ``args``; torch 2.9 writes a graph that onnx's shape inference
    rejects ("Inferred shape and existing shape differ")."""
    params = inspect.signature(torch.onnx.export).parameters
    major, minor = (int(part) for part in torch.__version__.split(".")[:2])
    return "dynamo" in params and (major, minor) >= (2, 14)


# --------------------------------------------------------------------------- export


def export_program(model: nn.Module, example: Tensor, *, dynamic_batch: bool = True):
    """``torch.export``: trace ``model(example)`` into an ``ExportedProgram``, a graph of ATen operations.

    The trace records what the tensors went through, not the Python that sent them: a branch on a
    tensor's value cannot be recorded (the export fails and names the line). With ``dynamic_batch`` the
    batch size is a symbol, so the program accepts any batch; every other size is fixed.

    Shape:
        example (B, C, H, W), B >= 2 with ``dynamic_batch`` (a batch of 1 would be taken as a constant)
    """
    if model.training:
        raise ValueError("export the model in eval mode (model.eval()): in training mode dropout and "
                         "drop-path would be traced into the graph")
    if dynamic_batch and example.shape[0] < 2:
        raise ValueError(f"with dynamic_batch=True give an example batch of at least 2 images, got "
                         f"{example.shape[0]}: torch.export specialises a size of 1 to a constant")
    name = next(iter(inspect.signature(model.forward).parameters))  # the forward's first argument
    shapes = {name: {0: torch.export.Dim("batch")}} if dynamic_batch else None
    quiet = [logging.getLogger(n) for n in ("torch.fx.experimental.symbolic_shapes", "torch.export",
                                            "torch._export", "torch._dynamo", "torch.fx")]
    levels = [log.level for log in quiet]
    printed = io.StringIO()  # a failed trace prints pages of graph code (with file paths) to stderr
    try:
        for log in quiet:
            log.setLevel(logging.CRITICAL)
        with contextlib.redirect_stderr(printed):
            program = torch.export.export(model, (example,), dynamic_shapes=shapes)
        sys.stderr.write(printed.getvalue())  # a successful trace's warnings are shown
        return program
    except Exception as error:
        message = str(error)
        if "data-dependent" not in message and "Dynamic control flow" not in message:  # torch >= 2.5, 2.4
            raise
        line = re.search(r"line (\d+), in (\w+)\n\s*(.+)", message)
        where = f" (line {line[1]} of {line[2]}: `{line[3].strip()}`)" if line else ""
        raise ExportError(f"torch.export cannot trace {type(model).__name__}: the code branches on a "
                          f"tensor's value{where}, which is only known when an image arrives. Write the "
                          "choice as a tensor operation (torch.where) or with torch.cond, so that the "
                          "graph holds both paths") from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)


def export_onnx(program, path: str | os.PathLike) -> Path:
    """Write an ``ExportedProgram`` (:func:`export_program`) to ``path`` as ONNX; return the path.

    The graph's input is called ``images`` and its output ``logits``; the batch stays dynamic if it was
    in the program. The exporter's progress messages are silenced.
    """
    if not onnx_export_available():
        raise RuntimeError(f"torch {torch.__version__} has no dynamo ONNX exporter; ONNX export here needs "
                           "torch >= 2.14 (pip install -U torch)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False, input_names=[INPUT_NAME],
                                         output_names=[OUTPUT_NAME])
    onnx_program.save(str(path))
    return path


def onnx_session(path: str | os.PathLike, *, threads: int | None = None):
    """An ONNX Runtime session on the CPU, with ``threads`` (default: torch's thread count) for one op."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_logits(session, images: Tensor, *, batch_size: int = 256) -> Tensor:
    """Run ``session`` on normalised ``images``, ``batch_size`` at a time; float32 logits.

    Shape:
        images (B, C, H, W) -> (B, K)
    """
    if images.ndim != 4:
        raise ValueError(f"expected normalised images shaped (B, C, H, W), got {tuple(images.shape)}")
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: chunk.float().contiguous().numpy()})[0] for chunk in images.split(batch_size)]
    return torch.from_numpy(np.concatenate(out)).float()


# --------------------------------------------------------------------------- the graph's parts


def _constants(graph) -> set[str]:
    """Names of the graph's fixed tensors: initializers and the outputs of Constant nodes."""
    names = {t.name for t in graph.initializer}
    names |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    return names


def graph_parts(model_proto) -> dict[str, list[str]]:
    """The node names of each part in :data:`PARTS`, read from an ONNX graph's operations.

    A matrix product with a fixed operand (a weight) is a linear layer, as are the patch embedding's
    convolution and the head's ``Gemm``; a matrix product of two activations is one of attention's two
    products (``Q Kᵀ`` and ``A V``); an addition of two activations is a residual connection (a bias
    addition has a fixed operand).
    """
    graph = model_proto.graph
    fixed = _constants(graph)
    parts: dict[str, list[str]] = {part: [] for part in PARTS}
    for node in graph.node:
        has_fixed = any(i in fixed for i in node.input)
        if node.op_type in ("Conv", "Gemm") or (node.op_type == "MatMul" and has_fixed):
            parts["linear layers"].append(node.name)
        elif node.op_type == "MatMul":
            parts["attention products"].append(node.name)
        elif node.op_type == "Softmax":
            parts["softmax"].append(node.name)
        elif node.op_type == "LayerNormalization":
            parts["LayerNorm"].append(node.name)
        elif node.op_type == "Gelu":
            parts["GELU"].append(node.name)
        elif node.op_type == "Add" and not has_fixed:
            parts["residual additions"].append(node.name)
    return parts


# --------------------------------------------------------------------------- precisions


@contextlib.contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantiser logs advice through the root logger; keep it off the page."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _preprocessed(src: Path, dst: Path) -> Path:
    """ONNX Runtime's recommended step before quantising: shape inference and graph clean-up."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = dst.with_name(f".{dst.stem}-pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    return pre


def quantize_dynamic_int8(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Dynamic int8: weights of the matrix products stored as int8 (a scale per output channel);
    each activation's range is measured on the fly, batch by batch, and it is quantised to match."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    with _quiet_quantizer():
        pre = _preprocessed(src, dst)
        quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, per_channel=True)
    pre.unlink()
    return dst


class _Calibration:
    """ONNX Runtime's CalibrationDataReader protocol over batches of normalised images."""

    def __init__(self, images: Tensor, batch_size: int) -> None:
        self._batches = iter(images.split(batch_size))

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch.float().contiguous().numpy()}


def quantize_static_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: Tensor, *,
                         parts: Sequence[str] = ("linear layers",), form: str = "QDQ",
                         batch_size: int = 64) -> Path:
    """Static int8 of the chosen ``parts`` (names from :data:`PARTS`): the float model runs once on the
    ``calibration`` images (normalised, from the training set), each activation's range is recorded, and
    scales and zero points are fixed from those ranges; weights are int8 with a scale per channel.

    The calibration keeps every intermediate tensor of every calibration image in memory (about 10 MB per
    image for the chapter's model): a few hundred images are plenty for ranges.

    ``form="QDQ"`` writes a QuantizeLinear/DequantizeLinear pair around every quantised tensor, which
    ONNX Runtime fuses into int8 kernels where it has them; elsewhere the pair still rounds the tensor
    to 8 bits, so the accuracy is what int8 there would give: the form for measuring which parts
    tolerate int8. ``form="QOperator"`` replaces the linear layers by int8 operators
    (``QLinearMatMul``, ``QLinearConv``; activations uint8, as ONNX Runtime advises on x86): the form
    for speed.

    Shape:
        calibration (n, C, H, W)
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if form not in ("QDQ", "QOperator"):
        raise ValueError(f"form must be 'QDQ' or 'QOperator', got {form!r}")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise ValueError(f"parts must be a non-empty selection of {PARTS}, got {list(parts)}")
    if calibration.ndim != 4 or not len(calibration):
        raise ValueError(f"calibration must be normalised images shaped (n, C, H, W), n >= 1, got "
                         f"{tuple(calibration.shape)}")
    src, dst = Path(src), Path(dst)
    with _quiet_quantizer():
        pre = _preprocessed(src, dst)
        found = graph_parts(onnx.load(str(pre)))
        nodes = [name for part in parts for name in found[part]]
        types = sorted({n.op_type for n in onnx.load(str(pre)).graph.node if n.name in set(nodes)})
        activations = QuantType.QInt8 if form == "QDQ" else QuantType.QUInt8
        quantize_static(str(pre), str(dst), _Calibration(calibration, batch_size),
                        quant_format=getattr(QuantFormat, form), per_channel=True,
                        activation_type=activations, weight_type=QuantType.QInt8,
                        op_types_to_quantize=types, nodes_to_quantize=nodes,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    pre.unlink()
    return dst


def convert_float16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Every float32 weight and activation in float16; the input and output stay float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    dst = Path(dst)
    with _quiet_quantizer():
        onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    return dst


# --------------------------------------------------------------------------- accuracy, paired


@dataclass(frozen=True)
class PairedChange:
    """One model's test accuracy against another's on the same images (``after`` minus ``before``).

    ``worse`` images were right before and wrong after, ``better`` the reverse; only they carry the
    change, ``(better - worse) / n``. ``standard_error`` is that of a paired difference (McNemar's
    setting): the per-image differences' standard deviation over ``sqrt(n)``, which is
    ``sqrt(worse + better - (worse - better)**2 / n) / n``, and 0 when no image changes.
    """

    change: float
    standard_error: float
    worse: int
    better: int
    n: int


def paired_accuracy_change(correct_before: Tensor, correct_after: Tensor) -> PairedChange:
    """Compare two models' per-image correctness on the same images, paired image by image.

    Two models that agree on most images make most of their mistakes on the same images, so the standard
    error of one accuracy (``sqrt(p (1 - p) / n)``) overstates the noise of their difference; the paired
    standard error counts only the images on which one is right and the other wrong.

    Shape:
        correct_before, correct_after: (n,) booleans, the same n images in the same order
    """
    before, after = correct_before.bool().flatten(), correct_after.bool().flatten()
    if before.shape != after.shape or before.numel() == 0:
        raise ValueError(f"give both models' correctness on the same images, got {tuple(correct_before.shape)} "
                         f"and {tuple(correct_after.shape)}")
    n = before.numel()
    worse, better = int((before & ~after).sum()), int((~before & after).sum())
    spread = max(worse + better - (worse - better) ** 2 / n, 0.0)  # n x variance of the differences
    return PairedChange((better - worse) / n, spread ** 0.5 / n, worse, better, n)


# --------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class LatencyRatio:
    """One runtime's latency against the reference's, round by round (same batch, same run)."""

    seconds: float  # this runtime's median seconds per call, over all rounds
    ratios: tuple[float, ...]  # its median / the reference's median, one per round

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def spread(self) -> tuple[float, float]:
        return min(self.ratios), max(self.ratios)


def interleaved_latency(sessions: Mapping[str, object], images: Tensor, *, batch_sizes: Iterable[int] = (1, 64),
                        reference: str | None = None, rounds: int = 5, repeats: int = 5,
                        warmup: int = 2) -> dict[int, dict[str, LatencyRatio]]:
    """Latency of every session at every batch size, as a ratio against ``reference`` (default: the first).

    For each batch size, :func:`~vit_from_scratch.efficiency.interleaved_benchmark` times the sessions in
    turn, ``rounds`` times: a slow moment of a shared machine hits neighbours alike, so the ratio within
    a round is steadier than one of separate runs, and its spread across rounds is the noise bar.

    Shape:
        images (n, C, H, W) normalised, n >= the largest batch size
    """
    reference = reference if reference is not None else next(iter(sessions))
    if reference not in sessions:
        raise ValueError(f"the reference {reference!r} is not one of the sessions {list(sessions)}")
    result = {}
    for batch in batch_sizes:
        if not 1 <= batch <= len(images):
            raise ValueError(f"batch size {batch} needs at least that many images, got {len(images)}")
        feed = images[:batch].float().contiguous().numpy()
        fns = {name: (lambda s=s: s.run(None, {s.get_inputs()[0].name: feed})) for name, s in sessions.items()}
        timings = interleaved_benchmark(fns, rounds=rounds, repeats=repeats, warmup=warmup)
        ref = [t.median for t in timings[reference]]
        result[batch] = {name: LatencyRatio(statistics.median(s for t in ts for s in t.seconds),
                                            tuple(t.median / r for t, r in zip(ts, ref)))
                         for name, ts in timings.items()}
    return result
