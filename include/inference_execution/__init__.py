"""Inference execution (``dags/inference_execution.py``): schemas, the model backends and training script (artifact
in ``include/inference_execution/models/failure_classifier``), the answer logic, its table and settings, and its clients
(predictor, SQS reply sender). Imports only ``event_streams.pipelines``."""
