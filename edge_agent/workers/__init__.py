"""Intake workers: a subscription with ``workers = N`` runs on N child processes sharing its topic filter.

Each worker (``edge-agent worker``, started and supervised by the agent: :mod:`edge_agent.workers.group`) has its
own device-broker session on an MQTT shared subscription, its own handler container(s), dispatcher and windows,
and commits its part of each window through the agent's outbox over its stdin/stdout (:mod:`.link`). The hub
merges the parts of a window (docs/architecture.md, "Intake workers").
"""
