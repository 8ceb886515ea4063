"""Local-only development stack: emulators for Graph, managed identity and the function host."""
