"""The AMQP edge: the only package that imports aio-pika, aiormq or pamqp. Connections,
topology, deliveries in, publishes and acks out, the revocation stream, queue tools."""
