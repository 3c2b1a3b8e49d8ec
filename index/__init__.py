"""twotower.index: sharded FAISS indexes, manifest and exact-merge search (no Ray)."""
