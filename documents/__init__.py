"""Document sets for calibration and evaluation: the user's PDFs and images, or synthetic business pages.

Torch-free: the runtime may import it.
"""

from exaone_edge.documents.generate import KINDS, generate_set
from exaone_edge.documents.ingest import LoadOptions, documents_or_builtin, load_documents
from exaone_edge.documents.model import QA, Document, DocumentSet, Skipped

__all__ = ["KINDS", "QA", "Document", "DocumentSet", "LoadOptions", "Skipped", "documents_or_builtin", "generate_set",
           "load_documents"]
