"""Cross-encoder rerankers (LoRA through peft). Not built yet: see the reranker issue."""
