"""The shared engine core: the two protocols, the stream, the request lifecycle and the per-row
text pipeline (detokenizer, stop strings) that every engine uses."""
