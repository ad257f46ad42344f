"""The front doors, one folder per protocol: wire models, translation, renderer and routes."""
