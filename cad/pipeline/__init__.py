"""Stage runner and content-addressed artifact store."""
