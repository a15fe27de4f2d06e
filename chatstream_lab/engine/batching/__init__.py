"""Our own batching engine: one thread drives a step-level backend (HF torch, scripted) with
per-row sampling, stop ids and detokenization; prefix and session KV caches; oneDNN kernels;
teacher-forced scoring."""
