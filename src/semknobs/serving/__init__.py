"""One module per model kind: folder config, builder, MLflow spec, models-from-code."""
