"""``kind: table``: any clinical table declared in params (columns, statements, the task)."""
