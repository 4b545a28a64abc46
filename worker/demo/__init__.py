"""``warden demo``: a development issuer, a worker and jobs, allowed and refused, on the local
RabbitMQ (:mod:`worker.demo.session`; the jobs: :mod:`worker.demo.scenario`)."""
