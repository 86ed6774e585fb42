"""Pipeline stages. Each module imports its heavy dependencies (Java, torch, FAISS) only when used."""
