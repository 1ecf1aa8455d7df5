"""The wire: sans-IO codecs (no sockets, no trio). ``record`` is the one home of the record
format shared by the store, the wire and the client."""
