"""A worker as a service: the consumer that settles every delivery, and the worker's life from
start to stop."""
