"""What the tests share: processes to start, stand-ins, harnesses, clients."""
