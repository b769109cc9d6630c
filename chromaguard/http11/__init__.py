"""HTTP/1.1: the server clients talk to, the client for the engine, and the field rules both follow."""
