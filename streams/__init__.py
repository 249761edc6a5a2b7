"""I/O around the core: replay from files, the Kafka worker, the producer, the CLI."""
