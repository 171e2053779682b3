"""Unit tests for vit_from_scratch.export (Chapter 14): export, ONNX Runtime, precisions, latency ratios.

An exported program and an ONNX file must compute what the model computes, with any batch size; a
branch on a tensor's value must fail with the line named; each precision must give a smaller file
whose logits stay near float32's; the graph's parts must be found; latency ratios must be ratios
against the reference; a paired accuracy change must count only the images that change. The ONNX tests skip where torch has no dynamo exporter (torch < 2.5) or
ONNX Runtime is missing.
"""

import pytest
import torch
from torch import nn

from vit_from_scratch.export import (PARTS, ExportError, LatencyRatio, convert_float16, export_onnx,
                                     export_program, graph_parts, interleaved_latency, onnx_export_available,
                                     onnx_logits, onnx_session, paired_accuracy_change, quantize_dynamic_int8,
                                     quantize_static_int8)

from _attention_tiny import images, tiny_model

needs_onnx = pytest.mark.skipif(not onnx_export_available(), reason="the dynamo ONNX exporter writes this graph correctly from torch 2.14 (see export.onnx_export_available)")


class _Branchy(nn.Module):
    def forward(self, x):
        if x.mean() > 0:  # a Python branch on a value
            return x * 2
        return x


def test_the_exported_program_computes_the_model_for_any_batch():
    model = tiny_model()
    program = export_program(model, images(2))
    with torch.no_grad():
        for batch in (1, 3, 5):
            x = images(batch)
            torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)


def test_export_refuses_training_mode_and_a_batch_of_one():
    with pytest.raises(ValueError, match="eval mode"):
        export_program(tiny_model().train(), images(2))
    with pytest.raises(ValueError, match="at least 2"):
        export_program(tiny_model(), images(1))


def test_a_branch_on_a_value_fails_naming_the_line_and_prints_nothing(capsys):
    with pytest.raises(ExportError, match=r"branches on a tensor's value .*x\.mean\(\) > 0.*torch\.where"):
        export_program(_Branchy().eval(), torch.randn(2, 3))
    assert "def forward" not in capsys.readouterr().err, "the failed trace's graph code reached stderr"


def test_a_paired_accuracy_change_counts_only_the_images_that_change():
    g = torch.Generator().manual_seed(0)
    before = torch.rand(1000, generator=g) < 0.8
    after = before.clone()
    after[:30] = ~after[:30]  # 30 images change, some each way
    p = paired_accuracy_change(before, after)
    assert (p.worse, p.better, p.n) == (int(before[:30].sum()), int((~before[:30]).sum()), 1000)
    assert p.change == pytest.approx(after.float().mean().item() - before.float().mean().item())
    d = after.double() - before.double()  # per image: -1, 0 or +1
    assert p.standard_error == pytest.approx((d.var(unbiased=False) / 1000).sqrt().item())
    one = (0.8 * 0.2 / 1000) ** 0.5  # one accuracy's binomial standard error
    assert p.standard_error < 0.5 * one  # 30 changed images are far less noisy than 1000
    same = paired_accuracy_change(before, before)
    assert (same.change, same.standard_error, same.worse, same.better) == (0, 0, 0, 0)
    with pytest.raises(ValueError, match="same images"):
        paired_accuracy_change(before, after[:10])


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    pytest.importorskip("onnxruntime")
    if not onnx_export_available():
        pytest.skip("torch < 2.5 has no dynamo ONNX exporter")
    folder = tmp_path_factory.mktemp("onnx")
    model = tiny_model()
    fp32 = export_onnx(export_program(model, images(2)), folder / "fp32.onnx")
    calibration = torch.randn(16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    files = {"fp32": fp32, "fp16": convert_float16(fp32, folder / "fp16.onnx"),
             "dynamic": quantize_dynamic_int8(fp32, folder / "dyn.onnx"),
             "static": quantize_static_int8(fp32, folder / "st.onnx", calibration, form="QOperator"),
             "static qdq all": quantize_static_int8(fp32, folder / "all.onnx", calibration, parts=PARTS)}
    return model, files


@needs_onnx
def test_onnx_runtime_computes_the_model(onnx_files):
    model, files = onnx_files
    x = images(5)
    logits = onnx_logits(onnx_session(files["fp32"]), x, batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), atol=1e-4, rtol=1e-4)


@needs_onnx
def test_each_precision_is_smaller_and_stays_near_float32(onnx_files):
    model, files = onnx_files
    x = images(4)
    with torch.no_grad():
        reference = model(x)
    size = {name: path.stat().st_size for name, path in files.items()}
    # the tiny model's weights are few, so the graph's own bytes weigh; the chapter's model shows the ratios
    assert size["fp16"] < size["fp32"] and size["dynamic"] < size["fp32"] and size["static"] < size["fp32"]
    scale = reference.abs().max()
    for name in ("fp16", "dynamic", "static", "static qdq all"):
        logits = onnx_logits(onnx_session(files[name]), x)
        change = (logits - reference).abs().max()
        assert 0 < change < 0.3 * scale, (name, change, scale)  # changed, but not wrecked
    assert not list(files["fp32"].parent.glob(".*-pre.onnx")), "temporary files left behind"


@needs_onnx
def test_the_graph_parts_are_found(onnx_files):
    import onnx

    parts = graph_parts(onnx.load(onnx_files[1]["fp32"]))
    depth = 3  # tiny_model's blocks
    assert set(parts) == set(PARTS)
    assert len(parts["linear layers"]) == 1 + 4 * depth + 1  # patch embedding, qkv/proj/fc1/fc2, head
    assert len(parts["attention products"]) == 2 * depth and len(parts["softmax"]) == depth
    assert len(parts["LayerNorm"]) == 2 * depth + 1 and len(parts["GELU"]) == depth
    assert len(parts["residual additions"]) == 2 * depth


@needs_onnx
def test_static_quantisation_checks_its_arguments(onnx_files, tmp_path):
    fp32 = onnx_files[1]["fp32"]
    with pytest.raises(ValueError, match="parts must be"):
        quantize_static_int8(fp32, tmp_path / "x.onnx", torch.randn(2, 3, 16, 16), parts=("heads",))
    with pytest.raises(ValueError, match="form must be"):
        quantize_static_int8(fp32, tmp_path / "x.onnx", torch.randn(2, 3, 16, 16), form="int4")


@needs_onnx
def test_latency_is_a_ratio_against_the_reference(onnx_files):
    files = onnx_files[1]
    sessions = {"fp32": onnx_session(files["fp32"]), "dynamic": onnx_session(files["dynamic"])}
    result = interleaved_latency(sessions, images(4), batch_sizes=(1, 4), rounds=2, repeats=1, warmup=1)
    assert set(result) == {1, 4}
    for ratios in result.values():
        assert ratios["fp32"].ratios == (1.0, 1.0) and ratios["fp32"].seconds > 0
        assert len(ratios["dynamic"].ratios) == 2 and ratios["dynamic"].ratio > 0
    with pytest.raises(ValueError, match="needs at least"):
        interleaved_latency(sessions, images(2), batch_sizes=(4,))
    assert LatencyRatio(1.0, (0.5, 2.0, 1.0)).spread == (0.5, 2.0)
