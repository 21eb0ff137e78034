"""What every shop service shares: the HTTP kit, header propagation and logging."""
