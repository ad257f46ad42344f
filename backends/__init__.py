"""Engine-neutral model serving layer: types, the Backend protocol, and engine adapters."""
