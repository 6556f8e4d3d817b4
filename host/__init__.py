"""Host side: runtime, tokenizer, Python API."""
