"""The front door: what each request goes through, and the relay that carries it to the engine and back."""
