"""``trionet ring``: a logical token ring across hosts with two counter-rotating tokens."""

__all__: list[str] = []
