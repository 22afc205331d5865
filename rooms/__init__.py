"""Rooms: one CRDT doc and its connections each; awareness; fan-out."""
