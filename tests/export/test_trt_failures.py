"""Failed TensorRT builds explained in one line with the node and a hint, from TensorRT's own
message formats (parser errors as ``IParserError`` reports them; builder errors as logged)."""

from __future__ import annotations

from ddpm_export.export.trt_failures import build_failure, parse_failure


def test_an_onnx_runtime_only_op_names_the_node_and_says_how_to_re_export():
    msg = parse_failure("m.onnx", [
        ("/unet/attentions.0/attn/MultiHeadAttention", "MultiHeadAttention",
         'INVALID_NODE: creator && "Plugin not found, are the plugin name, version, and namespace correct?"'),
        ("/unet/mid_attention/attn/MultiHeadAttention", "MultiHeadAttention", "INVALID_NODE")])
    assert msg.startswith("m.onnx: TensorRT cannot parse node '/unet/attentions.0/attn/MultiHeadAttention' "
                          "(MultiHeadAttention)")
    assert "(+1 more)" in msg and "--target tensorrt" in msg and "\n" not in msg


def test_another_unsupported_op_gets_the_generic_hint():
    msg = parse_failure("m.onnx", [("/unet/aspp/Foo", "Foo", "No importer registered for op: Foo")])
    assert "'/unet/aspp/Foo' (Foo): No importer registered for op: Foo" in msg and "polygraphy inspect" in msg
    assert "without saying why" in parse_failure("m.onnx", [])


def test_out_of_memory_names_the_batch_and_the_workspace():
    errors = ["[defaultAllocator.cpp::allocate::31] Error Code 1: Cuda Runtime (out of memory)",
              "Error Code 2: OutOfMemory (Requested size was 68719476736 bytes.)"]
    msg = build_failure(errors, max_batch=64, workspace_mib=None)
    assert msg.startswith("TensorRT ran out of GPU memory while building")
    assert "--max-batch (the profile goes up to 64)" in msg and "TensorRT's default" in msg and "\n" not in msg
    assert "4096 MiB" in build_failure(["Requested amount of GPU memory (1 bytes) could not be allocated"],
                                       max_batch=8, workspace_mib=4096)


def test_no_implementation_names_the_node():
    errors = ["Error Code 10: Internal Error (Could not find any implementation for node "
              "/unet/mid_attention/attn/MatMul.)"]
    msg = build_failure(errors, max_batch=16, workspace_mib=64)
    assert "node '/unet/mid_attention/attn/MatMul'" in msg and "--workspace (now 64 MiB)" in msg


def test_anything_else_reports_the_last_error():
    assert build_failure(["first", "Error Code 4: API Usage Error (bad profile)"], max_batch=1,
                         workspace_mib=None) == "TensorRT could not build the engine: Error Code 4: API Usage Error (bad profile)"


def test_a_failed_build_exits_2_not_1():
    """A failed build of a valid file is a tooling/environment failure (status 2, ddpm_export.errors);
    1 is kept for verification failures. The missing-dependency errors of the trt path are status 2 too."""
    import pytest

    pytest.importorskip("onnx")
    from ddpm_export.errors import MissingDependencyError, VerificationFailed, exit_status
    from ddpm_export.export.tensorrt import TensorRTUnavailable
    from ddpm_export.export.trt_failures import BuildFailed
    from ddpm_export.runtime.ort_gpu import ProviderUnavailable

    failed = BuildFailed(build_failure(["[TRT] out of memory at node /unet/conv_in/Conv"], max_batch=16,
                                       workspace_mib=None))
    assert exit_status(failed) == 2 and not isinstance(failed, VerificationFailed) and isinstance(failed, RuntimeError)
    for missing in (TensorRTUnavailable("no tensorrt"), ProviderUnavailable("no CUDAExecutionProvider")):
        assert isinstance(missing, MissingDependencyError) and exit_status(missing) == 2
