"""The Faust agents of roadwatch: task generator, LLM scheduler, result aggregator."""
