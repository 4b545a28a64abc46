"""The authorization core: token verification, keys, the verified-token cache, proof of
possession, introspection and revocation state. No AMQP here."""
