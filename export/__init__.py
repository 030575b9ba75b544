"""Export to ONNX / OpenVINO / TensorRT, quantization, validation against PyTorch."""
