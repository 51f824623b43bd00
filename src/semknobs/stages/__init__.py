"""One module per DVC stage: a typed params dataclass, a paths dataclass and ``run(params,
paths)`` holding all of the stage's logic. ``pipelines/<stage>.py`` only parses the command line,
opens the stage's MLflow run and calls ``run``; tests call ``run`` directly."""
