"""The Intune compliance-script bridge, importable and testable without the Functions host."""
