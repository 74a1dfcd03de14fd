"""polyspell's host: what users touch (the Host, tools, the coordinator, the CLI)."""
