"""Exporting trained runs for other runtimes.

- ``onnx.export_onnx(run, out_dir)``: frozen backbone + head as ONNX graphs with a JSON sidecar, served by
  ``mobile_vla.serving.onnx_runtime`` (``mobile-vla export RUN --format onnx --out DIR``).
"""
