"""chatstream_lab: streaming LLM chat for notebooks, and the same configuration as an endpoint."""
