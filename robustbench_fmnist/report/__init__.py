"""Reports: tidy rows in, tables, figures, markdown and HTML out (one module per job; import them by name)."""
