"""io: files and pictures every layer writes and reads: atomic writes, state-dict comparison, colour composites and overlays."""
