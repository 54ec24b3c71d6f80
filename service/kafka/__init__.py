"""Kafka plumbing shared by the CLI's operations commands and the worker.

Modules here are imported lazily by the commands that need them, so ``sluice --help`` never
pays for importing aiokafka. The one entry point the worker should reuse is
:func:`service.kafka.client_config.client_kwargs`: every Kafka client sluice builds gets its
brokers and security settings from there, so SSL/SASL behave the same everywhere.
"""
