"""Shared test fakes and helpers: in-memory disks and the daemon services the LVM core needs."""
