"""The domain search service: ``python -m retrieval serve --root DIR`` (FastAPI + uvicorn)."""

from .app import Service, create_app, load_keys, serve
from .settings import ServiceSettings
from .domain import Domain, DomainError
from .journal import DamagedJournal, Journal

__all__ = ["Service", "ServiceSettings", "create_app", "load_keys", "serve", "Domain", "DomainError",
           "Journal", "DamagedJournal"]
