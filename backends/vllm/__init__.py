"""lokal's vLLM adapter; importing this package imports no vLLM."""
