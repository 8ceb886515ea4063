"""The Intune compliance-script bridge, importable and testable without the Functions host."""

# The one version string: health, the Graph User-Agent and pyproject.toml (a test keeps them equal).
__version__ = "1.1.0"
