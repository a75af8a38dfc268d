"""`make chaos`: kill -9 Kafka nodes and service instances of the running fleet under load,
then count what was lost, duplicated or finished twice."""
