"""Key managers: castellan adapters and the embedded SQLite backend."""
