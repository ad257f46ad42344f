"""The CPU engine: llama.cpp through llama-cpp-python, driven by lokal's own engine thread."""
