"""Operating a worker: metrics, health endpoints, logs."""
