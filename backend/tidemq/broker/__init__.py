"""The broker node: the Trio shell around the store, protocol and replication."""
