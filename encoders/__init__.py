"""Bi-encoders for the dense stage (LoRA through peft). Not built yet: see the dense-stage issue."""
