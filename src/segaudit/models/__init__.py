"""Models: building from config (`build`), losses, checkpoints, external model sources
(smp folders, ONNX, TorchScript, HF, weights + factory: `sources`) and full-image
inference. Add a model format in `sources` and `checkpoints`."""
