"""Lua Torch7 serialization: the object model, a reader, a writer, and Lua ``nn`` rebuilt as PyTorch."""
