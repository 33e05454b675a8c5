"""The pseudonymous consent registry: consent forms, hospitals' consent records, snapshots."""
