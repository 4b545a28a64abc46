"""Generic mechanisms, each written once: a bounded cache, a backoff, a time formatter, strict
JSON. Nothing here knows of tokens, jobs or brokers."""
