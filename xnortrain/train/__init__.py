"""The trainer: a YAML config becomes a training run with exact resume.

``python -m xnortrain --config FILE`` builds the model and BinOp a config names
(`configured_model`), its data (`data`, `idx`), and runs the epochs (`loop`), with
checkpoints (`checkpoint`), data parallel under torchrun (`distributed`), the non-finite
guard (`nonfinite`), distillation (`distill`), warm start (`warm_start`), TensorBoard
(`tensorboard_log`) and curves (`plot`); `deployment` hands a finished run to
`xnortrain.deploy`. The trainer may import the core (`xnortrain.binop`, `quantizers`, ...)
and, in `deployment` alone, `xnortrain.deploy`; the core imports nothing from here.
"""
