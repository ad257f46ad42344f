"""lokal's client commands (`chat`, `pull`, `models`, `rm`): they talk to a running server over
HTTP and to the models directory; nothing here imports `server`."""
