"""One renderer per protocol: engine-neutral output events -> that protocol's stream frames,
collected body and mid-stream error."""
