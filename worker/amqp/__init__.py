"""The AMQP edge: the only package that imports aio-pika, aiormq or pamqp. Connections,
topology, deliveries in, publishes and acks out, the revocation stream, queue tools.

Importing it has pamqp salvage content headers it cannot decode (:mod:`worker.amqp.salvage`),
before any of warden's connections reads a frame: a worker's, a tool's or the revocation feed's.
"""

from worker.amqp import salvage

salvage.install()
