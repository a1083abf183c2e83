"""The one stderr console progress bars and run logs print to (stdout stays for results)."""

from rich.console import Console

console = Console(stderr=True)
