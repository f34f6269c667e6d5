"""``python -m trionet.ring`` runs the ``trionet ring`` commands (the same click group)."""

from trionet.ring.cli import ring

__all__: list[str] = []

ring(prog_name="trionet ring")
