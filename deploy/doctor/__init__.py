"""`python -m deploy.doctor`: check the prerequisites and the running system end to end."""
