"""The pipeline: a delivery in, an outcome out (allowed and run, denied, retried, waiting), free
of any transport."""
