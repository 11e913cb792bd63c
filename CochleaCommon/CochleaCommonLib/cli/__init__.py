"""The `cochlea` command line."""
